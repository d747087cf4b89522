"""`vasa-jax evaluate`: VASA-1's evaluation table for a model bundle, on held-out SynthTalk.

    vasa-jax evaluate --checkpoint BUNDLE --split test [--steps 10] [--cfg-audio 0.5]
                      [--config configs/eval.py:tiny] [--evaluators DIR] [--out DIR]

Inputs. `clips` SynthTalk clips of `frames` frames (default 4 s) of the split's identities (the
bundle's data set; `test`: people the generator never saw), with speech drawn afresh (clip
seeds 10_000 + i, so not the clips the model or its latents were built from). Each input is the
clip's first frame + its audio, conditioned on the clip's mean gaze, mean distance and emotion;
`samples` seeds per input (3, as the paper).

Rows (VASA-1 Table 1 layout, plus SynthTalk's control columns):
  real          the clip itself (ground-truth video) — the reference row
  ours          the bundle at --steps / --cfg-audio (default: the bundle's own settings)
  still image   the source frame repeated (no motion)
  copied motion the source animated with the motion the stage-1 encoder reads from *another*
                held-out clip (right kind of motion, unrelated to this audio)
and the ablations (VASA-1 Table 5): audio CFG scale λ_A ∈ {0, 0.5, 1, 2}; 10 vs 50 steps.

Columns. Sc ↑ / Sd ↓ (SyncNet offset search, `eval.syncnet`), CAPP ↑ (`eval.capp`), ΔP (closer
to real is better), FVD₂₅ ↓ (`eval.fvd`, first 25 frames of each video against all 25-frame
clips of the real videos), and through the SynthTalk oracle (`eval.oracle`): gaze error (°)
and distance error against the requested controls, emotion accuracy, lip-sync correlation (the
mouth opening the oracle reads vs the opening that goes with the audio), identity similarity
(source frame vs generated frames). Every measurement on video goes through the same networks
for every row, real video included.

The evaluation networks are trained on the evaluators' own SynthTalk identities
(`eval.evaluators`) when `--evaluators DIR` does not hold them yet, and reused after that.
Writes OUT/eval.json, OUT/table.md; nothing is written when the inputs are bad.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import numpy as np

from vasa_jax.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
COLUMNS = (  # key, header, format
    ("sc", "Sc ↑", "{:.3f}"), ("sd", "Sd ↓", "{:.3f}"), ("capp", "CAPP ↑", "{:.3f}"),
    ("delta_p", "ΔP →", "{:.3f}"), ("fvd25", "FVD₂₅ ↓", "{:.1f}"),
    ("gaze_error_deg", "gaze err (°) ↓", "{:.2f}"), ("distance_error", "dist err ↓", "{:.3f}"),
    ("emotion_accuracy", "emotion acc ↑", "{:.2f}"), ("lipsync_corr", "lip-sync r ↑", "{:+.3f}"),
    ("identity_similarity", "ID sim ↑", "{:.3f}"),
)


# ----------------------------------------------------------------------------------------------
# Evaluators.


def ensure_evaluators(directory: str, config, log_fn: Callable = log.info) -> dict:
    """Loads SyncNet, the oracle and CAPP from DIR/{syncnet,oracle,capp}; trains those missing."""
    from vasa_jax.eval import capp, evaluators, oracle, syncnet

    out = {}
    specs = (("syncnet", "syncnet", syncnet.train_syncnet),
             ("oracle", "synthtalk_oracle", oracle.train_oracle),
             ("capp", "capp", capp.train_capp))
    for name, kind, train in specs:
        path = os.path.join(directory, name)
        if not os.path.isfile(os.path.join(path, evaluators.NET_JSON)):
            t = time.perf_counter()
            log_fn(f"training the {name} evaluator into {path}")
            train(config[name].to_dict(), path,
                  log_fn=lambda h, n=name: log_fn(f"  {n}: {h}"))
            log_fn(f"  {name} trained in {time.perf_counter() - t:.0f} s")
        evaluators.read_meta(path, kind)
    net, meta = syncnet.load_trained_syncnet(os.path.join(directory, "syncnet"))
    out["syncnet"] = syncnet.SyncScorer(net)
    out["syncnet_meta"] = meta
    out["oracle"] = oracle.Oracle.load(os.path.join(directory, "oracle"))
    out["capp"] = capp.CAPP.load(os.path.join(directory, "capp"))
    return out


# ----------------------------------------------------------------------------------------------
# Inputs.


def eval_clips(manifest: dict, split: str, n: int, frames: int, resolution: int) -> list[dict]:
    """n fresh clips of the split's identities of the bundle's SynthTalk data set."""
    from vasa_jax.data import builders, synthtalk

    data = manifest.get("synthtalk")
    if not data:
        raise ConfigError("the bundle's manifest records no SynthTalk data set (synthtalk): "
                          "evaluate a bundle exported from SynthTalk-trained workdirs")
    cfg = builders.SynthTalkConfig(**{k: v for k, v in data.items() if k != "name"})
    ids = (builders.test_identity_ids(cfg) if split == "test" else builders.train_identity_ids(cfg))
    clips = []
    for i in range(n):
        ident = ids[i % len(ids)]
        clip = synthtalk.generate_clip(ident, 10_000 + i, frames, resolution)
        clips.append(dict(clip.factors, frames=clip.frames, audio=clip.audio,
                          emotion=clip.emotion, identity=ident))
    return clips


# ----------------------------------------------------------------------------------------------
# Measurement.


def measure_video(ev: dict, frames: np.ndarray, audio: np.ndarray, clip: dict,
                  source_identity: np.ndarray, capp_hop: int) -> dict:
    """Every per-video metric of one video (see the module doc)."""
    from vasa_jax.eval import pose_metrics as pm
    from vasa_jax.eval.capp import pose_of

    t = min(len(frames), len(audio) // 640, len(clip["mouth"]))
    frames, audio = frames[:t], audio[:t * 640]
    sync = ev["syncnet"](frames, audio)
    o = ev["oracle"](frames)
    return dict(
        sc=sync["confidence"], sd=sync["min_dist"], offset=sync["offset"],
        capp=ev["capp"].score(audio, pose_of(o), hop=capp_hop),
        delta_p=pm.delta_p(o["rotation"]),
        gaze_error_deg=pm.gaze_error_deg(np.mean(clip["gaze"], 0), o["gaze"]),
        distance_error=pm.distance_error(np.mean(clip["distance"]), o["distance"]),
        emotion_correct=float(pm.majority_emotion(o["emotion_logits"]) == int(clip["emotion"])),
        lipsync_corr=pm.pearson(o["mouth"][:, 0], clip["mouth"][:t, 0]),
        identity_similarity=pm.identity_similarity(source_identity, o["identity"]),
    )


def _aggregate(per_video: list[dict]) -> dict:
    keys = [k for k in per_video[0] if k != "offset"]
    row = {k: float(np.mean([v[k] for v in per_video])) for k in keys}
    row["emotion_accuracy"] = row.pop("emotion_correct")
    row["offset_abs_mean"] = float(np.mean([abs(v["offset"]) for v in per_video]))
    row["videos"] = len(per_video)
    return row


# ----------------------------------------------------------------------------------------------
# The run.


def evaluate(checkpoint: str, split: str = "test", out_dir: str | None = None, *,
             steps: int | None = None, cfg_audio: float | None = None, config=None,
             evaluators_dir: str | None = None, log_fn: Callable = log.info) -> dict:
    from vasa_jax.eval import fvd as fvd_lib
    from vasa_jax.inference import generate as G
    from vasa_jax.inference.bundle import load_bundle
    from vasa_jax.models.face import box_downsample_uint8

    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(SPLITS)}")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps {steps}: use a positive number of diffusion steps")
    if cfg_audio is not None and not np.isfinite(cfg_audio):
        raise ConfigError(f"--cfg-audio {cfg_audio}: use a finite guidance scale")
    if config is None:
        from vasa_jax.config_util import load_config

        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        config = load_config(os.path.join(here, "configs", "eval.py") + ":tiny")
    bundle = load_bundle(checkpoint)          # one-line error for a missing / wrong folder
    out_dir = os.path.abspath(out_dir or os.path.join(bundle.path, "eval"))
    evaluators_dir = os.path.abspath(evaluators_dir or os.path.join(out_dir, "evaluators"))
    rc = config.runner
    t0 = time.perf_counter()
    gen = G.Generator(bundle)
    res = bundle.image_size
    # A face model that reads larger frames than it draws (model.input_size) gets its portrait
    # and driving frames at its input size; every measurement is on frames at the drawn size.
    clips = eval_clips(bundle.manifest, split, int(rc.clips), int(rc.frames), bundle.input_size)
    factor = bundle.input_size // res
    for clip in clips:
        clip["input_frames"] = clip["frames"]
        clip["frames"] = box_downsample_uint8(clip["frames"], factor)
    default_steps = gen.default_steps
    default_cfg = dict(gen.default_cfg)
    main_steps = int(steps or default_steps)
    main_audio = float(default_cfg.get("audio", 0.0) if cfg_audio is None else cfg_audio)
    timings: dict[str, float] = {}

    def controls(clip, seed, n_steps, lam):
        return G.Controls(gaze=tuple(np.mean(clip["gaze"], 0).tolist()),
                          distance=float(np.mean(clip["distance"])), emotion=int(clip["emotion"]),
                          cfg={"audio": lam}, steps=n_steps, seed=seed)

    # Rows to generate: (name, steps, λ_A). The ablations share "ours" where they coincide.
    variants = {"ours": (main_steps, main_audio)}
    if rc.ablation:
        for lam in rc.cfg_ablation:
            variants.setdefault(f"cfg_audio={lam:g}", (main_steps, float(lam)))
        for s in rc.steps_ablation:
            variants.setdefault(f"steps={int(s)}", (int(s), main_audio))
    alias = {}
    for name, v in list(variants.items()):
        if name != "ours" and v == variants["ours"]:
            alias[name] = "ours"
            del variants[name]

    videos: dict[str, list[tuple[np.ndarray, int]]] = {k: [] for k in
                                                        ("real", "still", "copied", *variants)}
    for ci, clip in enumerate(clips):
        gen.prepare(clip["input_frames"][0])
        videos["real"].append((clip["frames"], ci))
        videos["still"].append((np.repeat(clip["frames"][:1], len(clip["frames"]), 0), ci))
        other = clips[(ci + 1) % len(clips)]["input_frames"]
        copied = gen.generate(clip["audio"], G.Controls(driving_video=other))
        videos["copied"].append((copied.frames, ci))
        for name, (n_steps, lam) in variants.items():
            t = time.perf_counter()
            for s in range(int(rc.samples)):
                r = gen.generate(clip["audio"], controls(clip, int(rc.seed) + s, n_steps, lam))
                videos[name].append((r.frames, ci))
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
        log_fn(f"generated input {ci + 1}/{len(clips)}")

    # The evaluation networks: loaded (or trained, when missing) once the videos exist.
    ev = ensure_evaluators(evaluators_dir, config, log_fn)
    src_ids = [ev["oracle"](c["frames"][:1])["identity"] for c in clips]
    rows = {}
    for name, vids in videos.items():
        per = [measure_video(ev, f, clips[ci]["audio"], clips[ci], src_ids[ci], int(rc.capp_hop))
               for f, ci in vids]
        rows[name] = _aggregate(per)
        log_fn(f"measured {name}")

    fvd_info = dict(enabled=bool(rc.fvd))
    if rc.fvd:
        i3d = fvd_lib.I3DFeatures(fvd_lib.load_i3d())
        real = np.concatenate([fvd_lib.split_clips(f) for f, _ in videos["real"]])
        real_feats = i3d(real)
        k = int(rc.fvd_clips_per_video)
        for name in ("real", "still", "copied", "ours"):
            fake = np.concatenate([fvd_lib.split_clips(f)[:k] for f, _ in videos[name]])
            feats = real_feats if name == "real" else i3d(fake)
            # The real row against itself is 0 by construction: shown as "—".
            rows[name]["fvd25"] = (None if name == "real"
                                   else fvd_lib.frechet_from_features(real_feats, feats))
            rows[name]["fvd25_clips"] = int(len(feats))
        fvd_info.update(real_clips=int(len(real_feats)), feature="I3D Kinetics-400 logits",
                        note="few clips: the 400-d covariances are rank-deficient; compare rows "
                             "with each other, not with published FVDs")
    for name, target in alias.items():
        rows[name] = rows[target]

    result = dict(
        checkpoint=bundle.path, checkpoint_hash=bundle.checkpoint_hash, split=split,
        face_step=bundle.manifest["face"].get("step"),
        motion_step=bundle.manifest["motion"].get("step"),
        steps=main_steps, cfg_audio=main_audio, bundle_default_cfg=default_cfg,
        clips=len(clips), frames=int(rc.frames), samples=int(rc.samples),
        resolution=res, rows=rows, fvd=fvd_info,
        evaluators=dict(directory=evaluators_dir,
                        syncnet=ev["syncnet_meta"].get("metrics", {}),
                        oracle=ev["oracle"].meta.get("metrics", {}),
                        capp=ev["capp"].meta.get("metrics", {})),
        generation_seconds=timings, total_seconds=round(time.perf_counter() - t0, 1),
        config=config.to_dict(),
    )
    table = markdown_table(result)
    os.makedirs(out_dir, exist_ok=True)
    for name, text in (("eval.json", json.dumps(result, indent=1, default=_jsonable)),
                       ("table.md", table)):
        tmp = os.path.join(out_dir, name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, name))
    result["out_dir"] = out_dir
    return result


def _jsonable(x: Any):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x).__name__)


def _fmt(row: dict, key: str, fmt: str) -> str:
    v = row.get(key)
    return "—" if v is None else fmt.format(v)


def markdown_table(result: dict) -> str:
    rows = result["rows"]
    head = "| Method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|---|" + "---|" * len(COLUMNS)

    def line(label, row):
        return f"| {label} | " + " | ".join(_fmt(row, k, f) for k, _, f in COLUMNS) + " |"

    labels = [("real", "Real video"), ("ours", f"Ours ({result['steps']} steps, "
                                                f"λ_A {result['cfg_audio']:g})"),
              ("still", "Still image"), ("copied", "Copied motion (other clip)")]
    out = [f"Split `{result['split']}`: {result['clips']} clips × {result['frames']} frames at "
           f"{result['resolution']}², {result['samples']} samples per input.", "", head, sep]
    out += [line(label, rows[k]) for k, label in labels if k in rows]
    abl = [k for k in rows if k.startswith(("cfg_audio=", "steps="))]
    if abl:
        out += ["", "Ablations (VASA-1 Table 5 style; FVD not computed for these rows):", "",
                head, sep]
        for k in sorted(abl, key=lambda s: (s.split("=")[0], float(s.split("=")[1]))):
            name, v = k.split("=")
            label = f"λ_A = {v}" if name == "cfg_audio" else f"{v} steps"
            out.append(line(label, {kk: vv for kk, vv in rows[k].items() if kk != "fvd25"}))
    return "\n".join(out) + "\n"


def summary(result: dict) -> str:
    return markdown_table(result) + f"\nwrote {result.get('out_dir', '')}/eval.json and table.md"
