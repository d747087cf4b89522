"""Stage-2 sanity evaluation on held-out SynthTalk identities and speech.

    python -m vasa_jax.eval.motion --face-workdir W1 --motion-workdir W2 [--steps 10]

For every clip of the latent set's test split (identities and speech never seen in training):
motion is sampled from the clip's audio (with its ground-truth gaze, distance and emotion as
conditions, the config's CFG scales) for two seeds, decoded to frames by stage 1 from the clip's
first frame, and the frames are encoded again by stage 1's motion encoder. A stage 1 that reads
larger frames than it draws (model.input_size) gets its drawn frames pixel-replicated up to its
input size; the `real_video` row puts the real clip through the same path (box filter to the
drawn size, replicated back) to show what that costs.

Mouth-following is measured by an independent linear probe z_dyn → mouth opening, fitted on
the *train* split's real latents against SynthTalk's ground truth (it never sees generated
motion): the Pearson correlation, per clip, between the probe's reading of the generated video
and the ground-truth mouth opening of that audio. Reference rows: the real clip's latents
(the probe's own ceiling), the real clip's frames at the drawn size re-encoded (the ceiling of
the video rows) and motion generated from another clip's audio (chance level).
Head-motion diversity: mean absolute difference of the head angles between the two seeds.
Writes `OUT/eval.json`, `OUT/sample.mp4` (one clip, seed 0, with its audio) and
`OUT/frames.png` (ground truth | seed 0 | seed 1, every 4th frame).
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError
from vasa_jax.eval.face_latent import probe_r2, ridge_fit, ridge_predict
from vasa_jax.models.face import box_downsample_uint8

log = logging.getLogger(__name__)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else 0.0


def fit_mouth_probe(train_source) -> dict:
    """Linear probe z_dyn → ground-truth mouth opening, fitted on a latent set's train split
    (real latents of real frames; it never sees generated motion)."""
    recs = [train_source[i] for i in range(len(train_source))]
    x = np.concatenate([r["motion"][:, 7:] for r in recs])
    y = np.concatenate([r["mouth"][:, :1] for r in recs])
    return dict(ridge_fit(x, y), x=x, y=y)


def read_mouth_opening(probe: dict, motion_raw) -> np.ndarray:
    """[T, 7 + dyn] raw motion latents → the probe's mouth opening [T]."""
    return ridge_predict(probe, np.asarray(motion_raw)[:, 7:])[:, 0]


def evaluate(face_workdir: str, motion_workdir: str, out_dir: str | None = None, *,
             steps: int | None = None, max_clips: int | None = None,
             watermark: bool = True) -> dict:
    """Stage-2 sanity evaluation on the held-out clips (module doc); returns and writes
    OUT/eval.json, plus a sample video (labelled as model output; `watermark=False` leaves its
    frames unmarked, as its metadata says) and a frame strip."""
    from vasa_jax import diffusion
    from vasa_jax.data import builders, latents, media
    from vasa_jax.data.synthtalk.spec import SAMPLES_PER_FRAME
    from vasa_jax.inference.motion import WindowSampler, sample_sequence
    from vasa_jax.train.extract_latents import motion_fn
    from vasa_jax.train.face_latent import restore_generator
    from vasa_jax.train.motion import restore_motion_model

    model, mcfg, norm, m_step = restore_motion_model(motion_workdir)
    gen, fcfg, f_step = restore_generator(face_workdir)
    factor = gen.input_size // gen.image_size  # > 1: reads frames larger than it draws
    out_dir = out_dir or os.path.join(motion_workdir, "eval")
    info = latents.read_info(mcfg.latents_dir)
    train_src = latents.LatentSource(mcfg.latents_dir, "train")
    test_src = latents.LatentSource(mcfg.latents_dir, "test")
    res = int((info.get("synthtalk") or {}).get("resolution", gen.input_size))
    if res != gen.input_size:
        raise ConfigError(f"{mcfg.latents_dir} was extracted from {res}² frames but "
                          f"{face_workdir} reads {gen.input_size}²: evaluate stage 2 with the "
                          "stage 1 its latents came from")
    frames_src = builders.prepare_synthtalk(
        fcfg.data.data_dir or os.path.join(face_workdir, "data"), **info["synthtalk"])["test"]

    probe = fit_mouth_probe(train_src)
    n_test = len(test_src) if max_clips is None else min(max_clips, len(test_src))
    test_recs = [test_src[i] for i in range(n_test)]
    probe_quality = probe_r2(probe["x"], probe["y"],
                             np.concatenate([r["motion"][:, 7:] for r in test_recs]),
                             np.concatenate([r["mouth"][:, :1] for r in test_recs]))

    def read_mouth(motion_raw):
        return read_mouth_opening(probe, motion_raw)

    # Stage-1 functions.
    g_def, g_state = nnx.split(gen)

    @jax.jit
    def encode(state, frames):
        return nnx.merge(g_def, state).encode(frames.astype(jnp.float32) / 127.5 - 1.0)

    @jax.jit
    def decode(state, src, z_pose, z_dyn):
        g = nnx.merge(g_def, state)
        b = z_pose.shape[0]
        rep = jax.tree.map(lambda a: jnp.repeat(a, b, 0), src)
        img = g.decode_latents(rep, z_pose, z_dyn)
        return jnp.clip(jnp.round((img + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

    def render(src, motion_raw, batch=25):
        out = []
        for i in range(0, len(motion_raw), batch):
            m = jnp.asarray(motion_raw[i:i + batch])
            out.append(np.asarray(decode(g_state, src, m[:, :7], m[:, 7:])))
        return np.concatenate(out)

    encode_motion = motion_fn(gen)

    def drawn_size(frames):  # uint8 frames at input size → the size stage 1 draws
        return box_downsample_uint8(frames, factor)

    def reencode(frames, batch=50):  # frames at the drawn size, replicated to the input size
        frames = np.repeat(np.repeat(frames, factor, axis=1), factor, axis=2)
        return np.concatenate([np.asarray(encode_motion(frames[i:i + batch]))
                               for i in range(0, len(frames), batch)])

    scales = dict(mcfg.sample.cfg.to_dict())
    sampler = WindowSampler(model, diffusion.make_schedule(**mcfg.diffusion.to_dict()),
                            num_steps=int(steps or mcfg.sample.steps), scales=scales)
    emotion_dim = mcfg.model.emotion_dim

    def generate(rec, audio_rec, seed):
        audio = norm("audio_feat", jnp.asarray(audio_rec["audio_feat"]))[None]
        gaze = norm("gaze", jnp.asarray(rec["gaze"]).mean(0))[None]
        dist = norm("distance", jnp.asarray(rec["distance"]).mean(0, keepdims=True))[None]
        emo = jax.nn.one_hot(jnp.asarray([int(rec["emotion"])]), emotion_dim)
        x = sample_sequence(sampler, audio, gaze, dist, emo, jax.random.key(seed))
        return np.asarray(norm.motion_to_raw(x[0]))

    rows = {k: [] for k in ("real_latent", "real_video", "generated_latent", "generated_video",
                            "other_audio_video")}
    seed_diff, seed_std, sample = [], [], None
    for ci, rec in enumerate(test_recs):
        truth = rec["mouth"][:, 0]
        frames_rec = frames_src[ci]
        assert int(frames_rec["clip_seed"]) == int(rec["clip_seed"])
        real = builders.decode_frames(frames_rec["frames"])
        src = encode(g_state, real[:1])
        m0 = generate(rec, rec, 0)
        m1 = generate(rec, rec, 1)
        video0 = render(src, m0)
        other = test_recs[(ci + 1) % len(test_recs)]
        t = min(len(other["audio_feat"]), len(rec["audio_feat"]))
        m_other = generate(rec, other, 0)[:t]
        rows["real_latent"].append(pearson(read_mouth(rec["motion"]), truth))
        rows["real_video"].append(pearson(read_mouth(reencode(drawn_size(real))), truth))
        rows["generated_latent"].append(pearson(read_mouth(m0), truth))
        rows["generated_video"].append(pearson(read_mouth(reencode(video0)), truth))
        rows["other_audio_video"].append(
            pearson(read_mouth(reencode(render(src, m_other))), truth[:t]))
        seed_diff.append(float(np.mean(np.abs(m0[:, :3] - m1[:, :3]))))
        seed_std.append(float(np.mean(np.std(m0[:, :3], axis=0))))
        if sample is None:
            video1 = render(src, m1)
            gt = drawn_size(real)
            sample = (gt, video0, video1, np.asarray(frames_src[ci]["audio"], np.float32))

    result = dict(
        face_step=f_step, motion_step=m_step, clips=len(test_recs), steps=sampler.num_steps,
        cfg=scales, mouth_probe_r2_on_real_test_latents=probe_quality["r2"],
        mouth_correlation={k: dict(mean=float(np.mean(v)), per_clip=v) for k, v in rows.items()},
        head_angle_seed_difference_deg=float(np.mean(seed_diff)),
        head_angle_temporal_std_deg=float(np.mean(seed_std)),
    )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    if sample is not None:
        gt, v0, v1, audio = sample
        n = len(v0)
        # Model output: labelled like the generator's (the same checkpoint hash as the bundle
        # `vasa-jax export` would write from these two workdirs).
        from vasa_jax import provenance
        from vasa_jax.inference.bundle import params_hash

        label = provenance.Provenance(
            checkpoint_hash=params_hash(nnx.state(gen).to_pure_dict(),
                                        nnx.state(model).to_pure_dict()),
            watermark=watermark)
        media.write_video(os.path.join(out_dir, "sample.mp4"), label.mark(v0), fps=25,
                          audio=audio[:n * SAMPLES_PER_FRAME], metadata=label.metadata())
        idx = np.arange(0, n, 4)[:12]
        strip = np.concatenate([np.concatenate(list(x[idx]), 1) for x in (gt, v0, v1)], 0)
        media.write_png(os.path.join(out_dir, "frames.png"), strip)
    return result


def summary(r: dict) -> str:
    mc = r["mouth_correlation"]
    return "\n".join([
        f"stage 1 step {r['face_step']}, stage 2 step {r['motion_step']}, {r['clips']} held-out "
        f"clips, {r['steps']} DDIM steps, CFG {r['cfg']}",
        f"mouth probe R² on real held-out latents: {r['mouth_probe_r2_on_real_test_latents']:.3f}",
        *(f"mouth opening correlation, {k:<18} {v['mean']:+.3f}" for k, v in mc.items()),
        f"head angles: seed-to-seed mean |Δ| {r['head_angle_seed_difference_deg']:.2f}°, "
        f"temporal std {r['head_angle_temporal_std_deg']:.2f}°",
    ])


def main(argv):
    del argv
    from absl import flags

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    F = flags.FLAGS
    r = evaluate(F.face_workdir, F.motion_workdir, F.out or None, steps=F.steps or None)
    print(summary(r))


if __name__ == "__main__":
    import sys

    from absl import app, flags

    from vasa_jax.train.extract_latents import _dashes_to_underscores

    sys.argv = _dashes_to_underscores(sys.argv)

    flags.DEFINE_string("face_workdir", None, "stage-1 workdir")
    flags.DEFINE_string("motion_workdir", None, "stage-2 workdir")
    flags.DEFINE_string("out", "", "output folder (default MOTION_WORKDIR/eval)")
    flags.DEFINE_integer("steps", 0, "DDIM steps (default: the config's)")
    flags.mark_flags_as_required(["face_workdir", "motion_workdir"])
    app.run(main)
