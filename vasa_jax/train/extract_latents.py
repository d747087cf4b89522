"""Runs the frozen stage-1 motion encoder over every clip → the stage-2 latent data set.

    python -m vasa_jax.train.extract_latents --face-checkpoint W1 --out LATENTS \
        [--dataset configs/synthtalk.py:cpu --data-dir D] [--audio logmel|wav2vec2 \
        --wav2vec2 HF_DIR] [--shard-size 16]

`--face-checkpoint` is a stage-1 workdir (its config.json and latest checkpoint; EMA weights).
`--dataset` defaults to the data the stage-1 run trained on: SynthTalk, or a real-video set from
`vasa-jax preprocess` (`config.data.dataset`). Conditions (`--conditions`): `truth` reads
SynthTalk's ground-truth gaze and distance; real clips have none, so they need `pose_proxy`
(the stage-1 encoder's own head pose: gaze ≈ head (yaw, pitch) in degrees, distance ≈
exp(−log-scale), a crude stand-in for VASA-1's gaze estimator and face-size distance) or your
estimator as `module:callable`, called as fn(frames uint8 [T, R, R, 3], motion [T, 7 + dyn])
→ {"gaze": [T, 2], "distance": [T]}. Without ground truth, mouth and rotation are NaN.
Resumable: shards are written atomically and finished shards are skipped on a rerun.
Layout and record fields: `vasa_jax.data.latents`.
"""

from __future__ import annotations

import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.data import latents
from vasa_jax.errors import ConfigError

log = logging.getLogger(__name__)

GROUND_TRUTH = ("gaze", "distance", "mouth", "rotation")


def motion_fn(gen):
    """uint8 frames [N, S, S, 3] → [z_pose, z_dyn] [N, 7 + dyn] from the motion encoder only
    (jitted; the appearance and identity encoders are not run)."""
    graphdef, state = nnx.split(gen)

    @jax.jit
    def f(state, frames):
        z_pose, z_dyn = nnx.merge(graphdef, state).encode_motion(
            frames.astype(jnp.float32) / 127.5 - 1.0)
        return jnp.concatenate([z_pose, z_dyn], -1)

    return lambda frames: f(state, frames)


def _stats(directory: str, shards: list[str]) -> dict:
    """Mean/std over every train frame of motion, audio features and distance."""
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    sums: dict[str, list] = {}
    for name in shards:
        src = ArrayRecordDataSource([os.path.join(directory, name)])
        for i in range(len(src)):
            rec = latents.decode_record(src[i])
            for k in ("motion", "audio_feat", "distance", "gaze"):
                x = np.asarray(rec[k], np.float64).reshape(len(rec[k]), -1)
                s = sums.setdefault(k, [0, 0.0, 0.0])
                s[0] += len(x)
                s[1] = s[1] + x.sum(0)
                s[2] = s[2] + (x * x).sum(0)
    out = {}
    for k, (n, s1, s2) in sums.items():
        mean = s1 / n
        std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0)) + 1e-6
        out[f"{k}_mean"] = mean.tolist()
        out[f"{k}_std"] = std.tolist()
    return out


def _conditions_fn(spec: str):
    """--conditions → None (ground truth) or fn(frames, motion) -> {"gaze", "distance"}."""
    if spec == "truth":
        return None
    if spec == "pose_proxy":
        def pose_proxy(frames, motion):
            del frames
            return {"gaze": motion[:, :2], "distance": np.exp(-motion[:, 6])}
        return pose_proxy
    from vasa_jax.data.face_crop import load_callable

    return load_callable(spec, "conditions")


def extract(face_workdir: str, out_dir: str, *, synthtalk: dict | None = None,
            data_dir: str | None = None, audio: str = "logmel", wav2vec2_path: str | None = None,
            shard_size: int = 16, batch: int = 64, progress: bool = True,
            conditions: str = "truth") -> dict:
    """Writes the latent data set to `out_dir`; returns its info.json contents."""
    from tqdm import tqdm

    from vasa_jax.data import builders
    from vasa_jax.models.audio import make_audio_features
    from vasa_jax.train.face_latent import restore_generator

    if shard_size < 1:
        raise ConfigError(f"shard_size={shard_size}: use a positive number of clips per shard")
    gen, face_config, face_step = restore_generator(face_workdir)
    size = gen.input_size  # the frames the motion encoder reads
    st = dict(synthtalk or face_config.data.synthtalk.to_dict())
    data_dir = data_dir or face_config.data.data_dir or os.path.join(face_workdir, "data")
    real = "" if synthtalk else str(face_config.data.get("dataset", "") or "")
    cond_fn = _conditions_fn(conditions)
    if real:  # a `vasa-jax preprocess` data set: no ground truth
        if cond_fn is None:
            raise ConfigError(f"{real} is real video without ground-truth gaze/distance: pass "
                              "--conditions=pose_proxy or --conditions=module:callable")
        sources = builders.open_sources(face_config.data, data_dir, image_size=size)
    else:
        if int(st["resolution"]) != size:
            raise ConfigError(f"the data set's resolution {st['resolution']} differs from the "
                              f"face model's input size {size}: pick a matching --dataset")
        sources = builders.prepare_synthtalk(data_dir, **st)
    features = make_audio_features(audio, wav2vec2_path=wav2vec2_path)
    audio_fn = jax.jit(features.apply)
    encode_motion = motion_fn(gen)
    motion_dim = int(face_config.model.dyn_dim) + 7

    os.makedirs(out_dir, exist_ok=True)
    header = dict(face_checkpoint=os.path.abspath(face_workdir), face_step=face_step,
                  synthtalk=st, audio=dict(kind=audio, wav2vec2_path=wav2vec2_path,
                                           feature_dim=int(features.feature_dim)),
                  motion_dim=motion_dim, fps=25)
    if real:  # (only then: SynthTalk latent folders written before keep matching)
        header.update(synthtalk=None, dataset=real, conditions=conditions)
    elif conditions != "truth":
        header.update(conditions=conditions)
    info_path = os.path.join(out_dir, latents.INFO_JSON)
    if os.path.isfile(info_path):
        with open(info_path, encoding="utf-8") as f:
            old = json.load(f)
        if {k: old.get(k) for k in header} != json.loads(json.dumps(header)):
            raise ConfigError(f"{out_dir!r} holds latents extracted with other settings "
                              "(checkpoint, data or audio front end): use a fresh --out")
    info = dict(header, complete=False, splits={})
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)

    for split in ("train", "test"):
        source = sources[split]
        n = len(source)
        names = [latents.shard_name(split, i) for i in range(math.ceil(n / shard_size))]
        info["splits"][split] = dict(num_clips=n, shards=names)
        bar = tqdm(total=n, desc=f"latents {split}", disable=not progress, unit="clip")
        for si, name in enumerate(names):
            lo, hi = si * shard_size, min(n, (si + 1) * shard_size)
            path = os.path.join(out_dir, name)
            if os.path.isfile(path):  # finished on an earlier run
                bar.update(hi - lo)
                continue
            records = []
            for r in range(lo, hi):
                rec = source[r]
                frames = builders.decode_frames(rec["frames"])
                motion = np.concatenate([np.asarray(encode_motion(frames[i:i + batch]))
                                         for i in range(0, len(frames), batch)])
                wav = np.asarray(rec["audio"], np.float32)[None]
                feat = np.asarray(audio_fn(features.params, wav))[0]
                t = len(frames)
                if feat.shape[0] != t:
                    raise ValueError(f"clip {r}: {feat.shape[0]} audio frames for {t} video "
                                     "frames; the audio must hold 640 samples per frame")
                out = dict(motion=motion.astype(np.float32), audio_feat=feat.astype(np.float32),
                           identity=np.int64(rec["identity"]), emotion=np.int64(rec["emotion"]),
                           clip_seed=np.int64(rec["clip_seed"]))
                estimated = {} if cond_fn is None else cond_fn(frames, motion)
                if cond_fn is not None and not {"gaze", "distance"} <= set(estimated):
                    raise ConfigError(f"--conditions={conditions} returned "
                                      f"{sorted(estimated)}: it must give gaze and distance")
                for k in GROUND_TRUTH:
                    if k in estimated:
                        out[k] = np.asarray(estimated[k], np.float32)
                    elif k in rec:
                        out[k] = np.asarray(rec[k], np.float32)
                    else:  # unknown (real video): NaN, as the latent layout documents
                        out[k] = np.full((t, 3), np.nan, np.float32)
                records.append(out)
                bar.update(1)
            latents.write_shard(path, records)
        bar.close()
        if split == "train":
            with open(os.path.join(out_dir, latents.STATS_JSON), "w", encoding="utf-8") as f:
                json.dump(_stats(out_dir, names), f)
    info["complete"] = True
    with open(info_path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    return info


def main(argv):
    del argv
    from absl import flags

    from vasa_jax.config_util import load_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    F = flags.FLAGS
    synthtalk = load_config(F.dataset).to_dict() if F.dataset else None
    info = extract(F.face_checkpoint, F.out, synthtalk=synthtalk, data_dir=F.data_dir or None,
                   audio=F.audio, wav2vec2_path=F.wav2vec2 or None, shard_size=F.shard_size,
                   conditions=F.conditions)
    print(f"wrote {sum(s['num_clips'] for s in info['splits'].values())} clips to {F.out}")


def _dashes_to_underscores(argv: list[str]) -> list[str]:
    """Accept --face-checkpoint as well as absl's --face_checkpoint."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith("---"):
            name, eq, value = a[2:].partition("=")
            a = "--" + name.replace("-", "_") + eq + value
        out.append(a)
    return out


if __name__ == "__main__":
    import sys

    from absl import app, flags

    sys.argv = _dashes_to_underscores(sys.argv)

    flags.DEFINE_string("face_checkpoint", None, "stage-1 workdir (config.json + checkpoints/)")
    flags.DEFINE_string("out", None, "output folder of the latent data set")
    flags.DEFINE_string("dataset", "", "SynthTalk config, e.g. configs/synthtalk.py:cpu "
                        "(default: the stage-1 run's data)")
    flags.DEFINE_string("data_dir", "", "where the SynthTalk data set lives / is built")
    flags.DEFINE_enum("audio", "logmel", ["logmel", "wav2vec2"], "audio front end")
    flags.DEFINE_string("wav2vec2", "", "local Hugging Face Wav2Vec2 checkpoint directory")
    flags.DEFINE_integer("shard_size", 16, "clips per array_record shard")
    flags.DEFINE_string("conditions", "truth", "gaze/distance source: truth (SynthTalk), "
                        "pose_proxy (the stage-1 head pose; real video) or module:callable")
    flags.mark_flags_as_required(["face_checkpoint", "out"])
    app.run(main)
