"""Stage-1 evaluation on held-out SynthTalk identities.

    python -m vasa_jax.eval.face_latent --workdir W [--out W/eval] [--held_out 64]

Reads the run's config and latest checkpoint (EMA weights) from the stage-1 workdir and reports:

- **self-reenactment PSNR**: for every held-out clip, frames 0 and T/2 are sources and every
  other frame of that clip is a driver; the reconstruction is compared with the driver frame.
- **cross-identity PSNR**: the first clip of each held-out identity is the source (frame 0); the
  drivers are frames of the next `cross_drivers` (7) held-out identities' first clips (with 8
  held-out identities: every other one). The reference is SynthTalk's
  own render of the *source* identity with the *driver's* factors (pose, translation, distance,
  gaze, blink, mouth, emotion) — the image a perfect reenactment would produce.
- **disentanglement**: ridge probes fitted on the train identities' codes, scored (R²) on the
  held-out identities: z_pose → rotation, translation, scale; z_dyn → mouth, eye-in-head gaze,
  blink, emotion (one-hot, plus argmax accuracy). Identity probes on the held-out identities
  (fitted on clip 0, tested on clip 1): from z_dyn (should be near chance), z_pose, z_id.
- baselines: the PSNR of simply returning the source frame (no motion transferred), for both.
- 90% intervals (`ci90`) for the four targeted figures, from resampling the held-out
  identities: with the run's 8 identities a probe's R² moves by several hundredths with which
  faces happen to be held out; `--held_out 64` renders more of SynthTalk's test identities.
- a sample grid PNG: source | driver | self-recon | cross driver | cross result | truth.

Writes `OUT/eval.json` and `OUT/samples.png`. PSNR is on 8-bit RGB frames (peak 255).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.models.face import box_downsample_uint8

log = logging.getLogger(__name__)

TARGETS = {"self_psnr": 28.0, "cross_psnr": 24.0, "pose_r2": 0.95, "mouth_r2": 0.9}


# ----------------------------------------------------------------------------------------------
# Metrics (numpy).


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 (or 0..255 float) images [..., H, W, C] → [...]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    mse = np.mean((a - b) ** 2, axis=(-3, -2, -1))
    return 10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))


def _design(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = (x - mean) / std
    return np.concatenate([z, np.ones((len(z), 1))], axis=1)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float = 1e-3) -> dict:
    """Linear least squares (features standardised, small ridge) y ≈ [x, 1] W."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64).reshape(len(x), -1)
    mean, std = x.mean(0), x.std(0) + 1e-8
    a = _design(x, mean, std)
    reg = alpha * len(x) * np.eye(a.shape[1])
    reg[-1, -1] = 0.0  # no penalty on the bias
    w = np.linalg.solve(a.T @ a + reg, a.T @ y)
    return dict(w=w, mean=mean, std=std)


def ridge_predict(probe: dict, x: np.ndarray) -> np.ndarray:
    return _design(np.asarray(x, np.float64), probe["mean"], probe["std"]) @ probe["w"]


def r2_score(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per output column: 1 − SSE / SST (on the scored set)."""
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    pred = np.asarray(pred, np.float64).reshape(len(y), -1)
    sse = np.sum((y - pred) ** 2, 0)
    sst = np.sum((y - y.mean(0)) ** 2, 0)
    return 1.0 - sse / np.maximum(sst, 1e-12)


def probe_r2(x_train, y_train, x_test, y_test, alpha: float = 1e-3,
             return_pred: bool = False) -> dict:
    probe = ridge_fit(x_train, y_train, alpha)
    pred = ridge_predict(probe, x_test)
    per_dim = r2_score(y_test, pred)
    out = dict(r2=float(np.mean(per_dim)), r2_per_dim=[float(v) for v in per_dim])
    if return_pred:
        out["pred"] = pred
    return out


def bootstrap_ci(groups: np.ndarray, statistic, *, draws: int = 1000, level: float = 0.9,
                 seed: int = 0) -> list[float]:
    """Percentile interval of `statistic(index array)` over `draws` resamplings of the groups.

    groups: [N] group label per item (here: the held-out identity of each frame or pair). Each
    draw picks as many groups as there are, with replacement, and passes the indices of all
    their items (a group drawn twice counts twice) to `statistic`. Identities, not frames, are
    the independent units: frames of one face share its biases.
    """
    groups = np.asarray(groups)
    labels, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(labels))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        pick = rng.integers(0, len(labels), len(labels))
        values.append(statistic(np.concatenate([members[g] for g in pick])))
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def probe_accuracy(x_train, labels_train, x_test, labels_test, alpha: float = 1e-3) -> float:
    """Linear classifier (ridge regression onto one-hot labels, argmax) accuracy on the test set."""
    classes = np.unique(labels_train)
    onehot = (labels_train[:, None] == classes[None]).astype(np.float64)
    pred = classes[ridge_predict(ridge_fit(x_train, onehot, alpha), x_test).argmax(1)]
    return float(np.mean(pred == labels_test))


# ----------------------------------------------------------------------------------------------
# Model functions.


_CODES = ("z_id", "z_pose", "z_dyn")


def _jitted(gen):
    graphdef, state = nnx.split(gen)

    @jax.jit
    def encode(state, frames):
        g = nnx.merge(graphdef, state)
        return g.encode(frames.astype(jnp.float32) / 127.5 - 1.0)

    @jax.jit
    def decode(state, src, drv):
        g = nnx.merge(graphdef, state)
        img = g.decode_latents(src, drv["z_pose"], drv["z_dyn"])
        return jnp.clip(jnp.round((img + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

    @jax.jit
    def codes(state, frames):  # the codes alone: XLA drops the appearance volume and skip
        out = encode(state, frames)
        return {k: out[k] for k in _CODES}

    return ((lambda frames: encode(state, frames)), (lambda s, d: decode(state, s, d)),
            (lambda frames: codes(state, frames)))


def _batched(fn, *arrays, batch: int = 64):
    out = []
    n = len(jax.tree.leaves(arrays)[0])
    for i in range(0, n, batch):
        out.append(jax.device_get(fn(*jax.tree.map(lambda a: a[i:i + batch], arrays))))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *out)


def _load_split(source) -> list[dict]:
    from vasa_jax.data import builders

    clips = []
    for r in range(len(source)):
        rec = source[r]
        clip = {k: np.asarray(v) for k, v in rec.items() if k != "frames"}
        clip["frames"] = builders.decode_frames(rec["frames"])
        clips.append(clip)
    return clips


def _codes(codes_fn, clips: list[dict]) -> list[dict]:
    """Per clip, the codes of every frame (z_id, z_pose, z_dyn; no volume or skip features,
    which for 1,536 clips would take ~10 GB)."""
    return [_batched(codes_fn, c["frames"]) for c in clips]


# ----------------------------------------------------------------------------------------------
# The evaluation.


def evaluate(workdir: str, out_dir: str | None = None, *, step: int | None = None,
             cross_frames: int = 10, grid_rows: int = 6, held_out: int = 0,
             cross_drivers: int = 7, bootstrap: int = 1000, ema: bool = True
             ) -> dict[str, Any]:
    """Evaluates a stage-1 run (see the module doc); writes OUT/eval.json and OUT/samples.png.

    held_out: how many held-out SynthTalk identities (0: the run's own test split). SynthTalk's
    test identities are a fixed sequence, so N > 8 keeps the first 8 and adds more; they are
    rendered under the run's data dir on first use (train identities are not re-rendered).
    cross_drivers: each source identity is driven by the next `cross_drivers` held-out
    identities in order (all the others when there are at most cross_drivers + 1).
    bootstrap: resamplings of the held-out identities for the 90% intervals in `ci90` (0: none).
    ema: score the EMA of the generator's weights (what inference uses); False: the raw weights
    of the last step.
    """
    if held_out < 0 or cross_drivers < 1 or bootstrap < 0:
        raise ValueError(f"held_out must be >= 0, cross_drivers >= 1 and bootstrap >= 0; got "
                         f"{held_out}, {cross_drivers}, {bootstrap}")
    from vasa_jax.data import builders, synthtalk
    from vasa_jax.data.synthtalk.identity import sample_identity
    from vasa_jax.train.face_latent import restore_generator, save_sample_grid

    gen, config, trained_step = restore_generator(workdir, step, ema=ema)
    out_dir = out_dir or os.path.join(workdir, "eval")
    data_dir = config.data.data_dir or os.path.join(workdir, "data")
    st = config.data.synthtalk.to_dict()
    sources = builders.prepare_synthtalk(data_dir, **st)
    resolution = int(st["resolution"])
    factor = gen.input_size // gen.image_size  # > 1: frames come at input_size, drawn smaller

    def small(frames):  # uint8 frames at input_size → at image_size, what the decoder draws
        return box_downsample_uint8(frames, factor)

    encode, decode, codes_fn = _jitted(gen)
    test_source = sources["test"]
    if held_out and held_out != int(st["num_test_identities"]):
        # Only the test split is wanted: one train identity keeps the extra render small.
        test_source = builders.prepare_synthtalk(
            data_dir, **dict(st, num_train_identities=1, num_test_identities=held_out))["test"]
    train_clips, test_clips = _load_split(sources["train"]), _load_split(test_source)
    log.info("encoding %d train and %d test clips", len(train_clips), len(test_clips))
    train_codes = _codes(codes_fn, train_clips)
    test_codes = _codes(codes_fn, test_clips)

    def take(codes, idx):
        return jax.tree.map(lambda a: a[idx], codes)

    first_clip: dict[int, int] = {}  # held-out identity → index of its first clip
    for ci, clip in enumerate(test_clips):
        first_clip.setdefault(int(clip["identity"]), ci)

    # Self-reenactment: sources frame 0 and T/2 of each held-out clip, every other frame drives.
    self_psnr, copy_psnr, grid, self_ids = [], [], {}, []
    for ci, clip in enumerate(test_clips):
        t = len(clip["frames"])
        full = (_batched(encode, clip["frames"][:1]),
                _batched(encode, clip["frames"][t // 2:t // 2 + 1]))
        frames = small(clip["frames"])
        for s_idx, src in zip((0, t // 2), full):
            drivers = np.asarray([i for i in range(t) if i != s_idx])
            src_rep = jax.tree.map(lambda a: np.repeat(a, len(drivers), 0), src)
            recon = _batched(decode, src_rep, take(test_codes[ci], drivers))
            self_psnr.extend(psnr(recon, frames[drivers]).tolist())
            self_ids.extend([int(clip["identity"])] * len(drivers))
            copy_psnr.extend(psnr(frames[s_idx][None], frames[drivers]).tolist())
            if s_idx == 0 and first_clip[int(clip["identity"])] == ci:
                k = len(drivers) // 2
                grid[ci] = [frames[0], frames[drivers[k]], recon[k]]

    # Cross-identity: source = first clip of identity A (frame 0), drivers = frames of the first
    # clip of every other held-out identity; reference = SynthTalk render of A with their factors.
    cross_psnr, cross_copy_psnr, cross_rows, cross_ids = [], [], {}, []
    factor_keys = ("rotation", "translation", "distance", "eye_gaze", "blink", "mouth")
    order = list(first_clip.items())
    for ai, (a_id, a_ci) in enumerate(order):
        src = _batched(encode, test_clips[a_ci]["frames"][:1])
        identity_a = sample_identity(a_id)
        for j in range(1, min(cross_drivers, len(order) - 1) + 1):
            b_ci = order[(ai + j) % len(order)][1]
            drv_clip = test_clips[b_ci]
            t = len(drv_clip["frames"])
            idx = np.linspace(0, t - 1, cross_frames).round().astype(int)
            factors = {k: drv_clip[k][idx] for k in factor_keys}
            truth = small(synthtalk.render_frames(identity_a, factors,
                                                  int(drv_clip["emotion"]), resolution))
            src_rep = jax.tree.map(lambda a: np.repeat(a, len(idx), 0), src)
            result = _batched(decode, src_rep, take(test_codes[b_ci], idx))
            cross_psnr.extend(psnr(result, truth).tolist())
            cross_ids.extend([a_id] * len(idx))
            cross_copy_psnr.extend(psnr(small(test_clips[a_ci]["frames"][:1]), truth).tolist())
            if a_ci not in cross_rows:
                k = len(idx) // 2
                cross_rows[a_ci] = [small(drv_clip["frames"][idx[k:k + 1]])[0], result[k],
                                    truth[k]]

    # Probes: fit on train identities, score on held-out identities.
    def stack(codes, clips, key_code, key_truth=None, fn=None):
        x = np.concatenate([c[key_code] for c in codes])
        if key_truth is None:
            return x
        y = np.concatenate([fn(c) if fn else c[key_truth] for c in clips])
        return x, y

    def emotion_onehot(c):
        e = np.zeros((len(c["frames"]), len(synthtalk.EMOTIONS)))
        e[:, int(c["emotion"])] = 1.0
        return e

    def frame_identities(clips):
        return np.concatenate([np.full(len(c["frames"]), int(c["identity"])) for c in clips])

    ci90 = {}
    if bootstrap:
        sp, cp = np.asarray(self_psnr), np.asarray(cross_psnr)
        ci90["self_psnr"] = bootstrap_ci(np.asarray(self_ids), lambda i: sp[i].mean(),
                                         draws=bootstrap)
        ci90["cross_psnr"] = bootstrap_ci(np.asarray(cross_ids), lambda i: cp[i].mean(),
                                          draws=bootstrap)
    ids = frame_identities(test_clips)
    # The two targeted probes are also scored on faces the encoders were trained on: fitted on
    # half the train identities' frames, scored on the other half's. The gap to the held-out
    # figures is what generalising to new faces costs (the probe is equally linear in both).
    train_ids = frame_identities(train_clips)
    fit_half = np.isin(train_ids, np.unique(train_ids)[::2])
    targeted = {"pose_rotation": "pose_r2", "dyn_mouth": "mouth_r2"}
    probes, probes_seen = {}, {}
    for name, code, fn in [
        ("pose_rotation", "z_pose", lambda c: c["rotation"]),
        ("pose_translation", "z_pose", lambda c: c["translation"]),
        ("pose_scale", "z_pose", lambda c: c["scale"]),
        ("dyn_mouth", "z_dyn", lambda c: c["mouth"]),
        ("dyn_mouth_opening", "z_dyn", lambda c: c["mouth"][:, :1]),
        ("dyn_gaze", "z_dyn", lambda c: c["eye_gaze"]),
        ("dyn_blink", "z_dyn", lambda c: c["blink"]),
        ("dyn_emotion", "z_dyn", emotion_onehot),
        # Leakage checks: how much of the pose is readable from z_dyn, and mouth from z_pose.
        ("dyn_to_rotation", "z_dyn", lambda c: c["rotation"]),
        ("pose_to_mouth", "z_pose", lambda c: c["mouth"]),
    ]:
        xtr, ytr = stack(train_codes, train_clips, code, name, fn)
        xte, yte = stack(test_codes, test_clips, code, name, fn)
        probes[name] = probe_r2(xtr, ytr, xte, yte, return_pred=True)
        pred = probes[name].pop("pred")
        if name not in targeted:
            continue
        if bootstrap:
            ci90[targeted[name]] = bootstrap_ci(
                ids, lambda i: float(np.mean(r2_score(yte[i], pred[i]))), draws=bootstrap)
        if fit_half.any() and (~fit_half).any():
            probes_seen[name] = probe_r2(xtr[fit_half], ytr[fit_half], xtr[~fit_half],
                                         ytr[~fit_half])
    emo_tr = np.concatenate([np.full(len(c["frames"]), int(c["emotion"])) for c in train_clips])
    emo_te = np.concatenate([np.full(len(c["frames"]), int(c["emotion"])) for c in test_clips])
    probes["dyn_emotion"]["accuracy"] = probe_accuracy(
        stack(train_codes, train_clips, "z_dyn"), emo_tr,
        stack(test_codes, test_clips, "z_dyn"), emo_te)
    probes["dyn_emotion"]["chance"] = float(np.max(np.bincount(emo_te)) / len(emo_te))

    # Identity probes on the held-out identities: fit on each identity's first clip, test on
    # the rest.
    is_first = np.concatenate([np.full(len(c["frames"]), first_clip[int(c["identity"])] == ci)
                               for ci, c in enumerate(test_clips)])
    identity_probe = {"chance": 1.0 / len(first_clip)}
    for code in ("z_dyn", "z_pose", "z_id"):
        x = stack(test_codes, test_clips, code)
        identity_probe[code] = probe_accuracy(x[is_first], ids[is_first], x[~is_first],
                                              ids[~is_first])

    result = {
        "workdir": os.path.abspath(workdir),
        "step": trained_step,
        "weights": "ema" if ema else "raw",
        "data": st,
        "held_out_identities": len(first_clip),
        # Frames are encoded at input_size; PSNRs compare at image_size (box-filtered truth).
        "image_size": int(gen.image_size),
        "input_size": int(gen.input_size),
        "self_psnr": float(np.mean(self_psnr)),
        "self_psnr_pairs": len(self_psnr),
        "cross_psnr": float(np.mean(cross_psnr)),
        # Baselines: the source frame itself as the answer (no motion transferred at all).
        "self_psnr_copy_source": float(np.mean(copy_psnr)),
        "cross_psnr_copy_source": float(np.mean(cross_copy_psnr)),
        "cross_psnr_pairs": len(cross_psnr),
        "probes": probes,
        "probes_seen_faces": probes_seen,
        "identity_probe": identity_probe,
        # 90% percentile intervals over resamplings of the held-out identities.
        "ci90": ci90,
        "targets": TARGETS,
    }
    result["meets"] = {
        "self_psnr": result["self_psnr"] >= TARGETS["self_psnr"],
        "cross_psnr": result["cross_psnr"] >= TARGETS["cross_psnr"],
        "pose_r2": probes["pose_rotation"]["r2"] >= TARGETS["pose_r2"],
        "mouth_r2": probes["dyn_mouth"]["r2"] >= TARGETS["mouth_r2"],
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    rows = [grid[ci] + cross_rows[ci] for ci in sorted(cross_rows)][:grid_rows]
    if rows:
        arr = np.asarray(rows, np.float32) / 127.5 - 1.0  # [rows, 6, H, W, 3]
        save_sample_grid(os.path.join(out_dir, "samples.png"), arr)
    return result


def summary(result: dict) -> str:
    p = result["probes"]
    lines = [
        f"step {result['step']}, {result['held_out_identities']} held-out identities",
        f"self-reenactment PSNR  {result['self_psnr']:.2f} dB ({result['self_psnr_pairs']} pairs)",
        f"cross-identity PSNR    {result['cross_psnr']:.2f} dB "
        f"({result['cross_psnr_pairs']} pairs)",
        f"copy-the-source baseline: self {result['self_psnr_copy_source']:.2f} dB, "
        f"cross {result['cross_psnr_copy_source']:.2f} dB",
    ]
    for k, v in p.items():
        extra = f"  acc {v['accuracy']:.3f} (chance {v['chance']:.3f})" if "accuracy" in v else ""
        lines.append(f"R² {k:<18} {v['r2']:.3f}{extra}")
    for k, v in result.get("probes_seen_faces", {}).items():
        lines.append(f"R² {k:<18} {v['r2']:.3f} on faces seen in training (other half)")
    for k, (lo, hi) in result.get("ci90", {}).items():
        lines.append(f"90% interval over held-out identities: {k:<10} {lo:.3f} … {hi:.3f}")
    ip = result["identity_probe"]
    lines.append("identity probe accuracy (chance %.3f): z_dyn %.3f, z_pose %.3f, z_id %.3f"
                 % (ip["chance"], ip["z_dyn"], ip["z_pose"], ip["z_id"]))
    return "\n".join(lines)


def main(argv):
    del argv
    from absl import flags

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    f = flags.FLAGS
    try:
        result = evaluate(f.workdir, f.out or None, held_out=f.held_out,
                          cross_drivers=f.cross_drivers, bootstrap=f.bootstrap,
                          ema=f.weights == "ema")
    except ValueError as e:
        raise SystemExit(f"vasa_jax.eval.face_latent: {e}") from None
    print(summary(result))


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "stage-1 workdir (config.json + checkpoints/)")
    flags.DEFINE_string("out", "", "output folder (default WORKDIR/eval)")
    flags.DEFINE_integer("held_out", 0, "held-out SynthTalk identities (0: the run's test split; "
                         "larger sets keep its identities and add more)")
    flags.DEFINE_integer("cross_drivers", 7, "driver identities per cross-identity source")
    flags.DEFINE_integer("bootstrap", 1000, "identity resamplings for the 90% intervals (0: off)")
    flags.DEFINE_enum("weights", "ema", ["ema", "raw"], "the generator's EMA weights (what "
                      "inference uses) or the raw weights of the last step")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
