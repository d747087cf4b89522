"""The SynthTalk oracle: one network that reads every ground-truth factor back from a frame.

    oracle = Oracle.load("EVAL/oracle")            # or train_oracle(config, "EVAL/oracle")
    r = oracle(frames)                              # uint8 [T, H, W, 3]
    r["rotation"] [T, 3] (deg), r["translation"] [T, 2], r["distance"] [T], r["gaze"] [T, 2]
    (camera-frame θ, φ in degrees), r["blink"] [T], r["mouth"] [T, 3],
    r["emotion_logits"] [T, 5], r["identity"] [T, D] (unit norm)

It stands in for the off-the-shelf estimators VASA-1's evaluation uses (a gaze network, a 3D
face / head-pose fitter, an emotion classifier, ArcFace): on SynthTalk every factor is known
exactly, so the oracle is trained on frames of its own identities (`eval.evaluators`) and its
accuracy is measured on identities it never saw (`held_out` in net.json).

Network: four conv stages (`blocks` 3×3 convs each, the first with stride 2; GroupNorm, SiLU)
on the frame resized to `image_size`,
flatten (the layout matters: pose and gaze are positions), a 256-unit trunk, and linear heads —
regression of the standardised factors (mean squared error, gaze and blink weighted up),
emotion (cross-entropy) and an identity embedding trained contrastively (two frames of each
face in the batch, InfoNCE).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError
from vasa_jax.models.identity_net import l2_normalize

log = logging.getLogger(__name__)

EMOTIONS = 5
# Regression targets: name → (width, offset, scale) — the network predicts (x − offset) / scale.
TARGETS = {
    "rotation": (3, 0.0, 15.0),
    "translation": (2, 0.0, 0.2),
    "distance": (1, 3.3, 0.35),
    "gaze": (2, 0.0, 15.0),
    "blink": (1, 0.5, 0.5),
    "mouth": (3, 0.4, 0.3),
}
# Loss weight per regression target (gaze and blink are read from a few pixels of eye; without
# extra weight the network settles for the head pose and the mean).
WEIGHTS = {"gaze": 3.0, "blink": 3.0}


@dataclasses.dataclass(frozen=True)
class OracleConfig:
    image_size: int = 64
    channels: tuple = (32, 64, 96, 128)
    hidden: int = 256
    id_dim: int = 64
    blocks: int = 1         # 3×3 convs per stage (the first with stride 2)


class OracleNet(nnx.Module):
    def __init__(self, config: OracleConfig, *, rngs: nnx.Rngs):
        self.config = config
        chans = tuple(config.channels)
        convs, norms, cin = [], [], 3
        for co in chans:
            for b in range(config.blocks):
                convs.append(nnx.Conv(cin, co, (3, 3), strides=2 if b == 0 else 1,
                                      padding=((1, 1), (1, 1)), rngs=rngs))
                norms.append(nnx.GroupNorm(co, num_groups=min(8, co // 4), rngs=rngs))
                cin = co
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        side = config.image_size // 2 ** len(chans)
        self.trunk = nnx.Linear(side * side * chans[-1], config.hidden, rngs=rngs)
        width = sum(w for w, _, _ in TARGETS.values())
        self.regress = nnx.Linear(config.hidden, width, rngs=rngs)
        self.emotion = nnx.Linear(config.hidden, EMOTIONS, rngs=rngs)
        self.ident = nnx.Linear(config.hidden, config.id_dim, rngs=rngs)

    def __call__(self, images: jax.Array) -> dict:
        """images [B, S, S, 3] in [-1, 1] → {"regress": [B, R], "emotion": [B, 5],
        "identity": [B, D] unit norm}."""
        h = images
        for conv, norm in zip(self.convs, self.norms):
            h = jax.nn.silu(norm(conv(h)))
        h = jax.nn.silu(self.trunk(h.reshape(h.shape[0], -1)))
        return dict(regress=self.regress(h), emotion=self.emotion(h),
                    identity=l2_normalize(self.ident(h)))


def _targets(clip: Mapping[str, np.ndarray]) -> np.ndarray:
    cols = []
    for name, (w, off, scale) in TARGETS.items():
        cols.append((np.asarray(clip[name], np.float32).reshape(-1, w) - off) / scale)
    return np.concatenate(cols, 1)


def _decode(regress: np.ndarray) -> dict:
    out, i = {}, 0
    for name, (w, off, scale) in TARGETS.items():
        v = regress[:, i:i + w] * scale + off
        out[name] = v[:, 0] if w == 1 else v
        i += w
    return out


def _prep(frames: np.ndarray, size: int) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ConfigError(f"oracle frames have shape {frames.shape} dtype {frames.dtype}: pass "
                          "uint8 [T, H, W, 3]")
    if frames.shape[1:3] != (size, size):
        from PIL import Image

        frames = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR))
                           for f in frames])
    return frames


class Oracle:
    """A trained `OracleNet` with a jitted, fixed-batch reader (see the module doc)."""

    def __init__(self, net: OracleNet, meta: dict | None = None, batch: int = 50):
        self.net, self.meta = net, meta or {}
        self.config = net.config
        graphdef, self.state = nnx.split(net)
        self.batch = batch

        @jax.jit
        def read(state, x):
            return nnx.merge(graphdef, state)(x.astype(jnp.float32) / 127.5 - 1.0)

        self._read = read

    @classmethod
    def load(cls, directory: str) -> "Oracle":
        from vasa_jax.eval.evaluators import load_params

        def build(meta):
            c = dict(meta["config"])
            c["channels"] = tuple(c["channels"])
            return OracleNet(OracleConfig(**c), rngs=nnx.Rngs(0))

        net, meta = load_params(directory, "synthtalk_oracle", build)
        return cls(net, meta)

    def __call__(self, frames: np.ndarray) -> dict:
        x = _prep(frames, self.config.image_size)
        outs = []
        b = self.batch
        for i in range(0, len(x), b):
            part = x[i:i + b]
            n = len(part)
            if n < b:
                part = np.concatenate([part, np.repeat(part[-1:], b - n, 0)])
            outs.append({k: np.asarray(v)[:n] for k, v in self._read(self.state, part).items()})
        o = {k: np.concatenate([d[k] for d in outs]) for k in outs[0]}
        r = _decode(o["regress"])
        r["emotion_logits"] = o["emotion"]
        r["identity"] = o["identity"]
        return r


def training_frames(identities: int, frames_per_identity: int, tracks: int, track_frames: int,
                    resolution: int, seed: int = 0, blink_fraction: float = 0.15,
                    log_fn=None) -> dict:
    """The oracle's training set: `frames_per_identity` frames of each of `identities` train
    identities (`eval.evaluators`), every frame with its own factors — a random moment of one of
    `tracks` factor tracks (speech + motion of `track_frames` frames, not rendered) and its own
    random emotion — so that no factor is tied to a face (a face seen in one clip is seen with
    one emotion and a few poses, which the network memorises). `blink_fraction` of the frames
    are drawn from blinks (eyes ≥ 30 % shut; rare in speech).

    → frames uint8 [N, R, R, 3], targets [N, R] (`_targets`), emotion [N], identity [N]
    (0..identities-1)."""
    from vasa_jax.data import synthtalk
    from vasa_jax.data.synthtalk.motion import FOCAL
    from vasa_jax.data.synthtalk.render import Renderer
    from vasa_jax.data.synthtalk.spec import EMOTIONS
    from vasa_jax.eval import evaluators

    track = evaluators.render_clips("train", tracks, track_frames, resolution, seed + 7,
                                    clips_per_identity=1, render=False)
    blinks = [np.flatnonzero(np.asarray(c["blink"]) > 0.3) for c in track]
    rng = np.random.default_rng(seed)
    frames, rows, emotion, ident = [], [], [], []
    for k, idn in enumerate(evaluators.identity_ids("train", identities)):
        renderer = Renderer(synthtalk.sample_identity(idn), resolution)
        for _ in range(frames_per_identity):
            ci = int(rng.integers(len(track)))
            c = track[ci]
            if rng.uniform() < blink_fraction and len(blinks[ci]):
                t = int(rng.choice(blinks[ci]))
            else:
                t = int(rng.integers(len(c["blink"])))
            e = int(rng.integers(len(EMOTIONS)))
            dist = float(c["distance"][t])
            tr = np.asarray(c["translation"][t], np.float64)
            shift = (tr[0] * dist / FOCAL, -tr[1] * dist / FOCAL)
            frames.append(renderer.render(c["rotation"][t], shift, dist, c["eye_gaze"][t],
                                          c["blink"][t], c["mouth"][t], EMOTIONS[e]))
            rows.append({name: np.asarray(c[name])[t:t + 1] for name in TARGETS})
            emotion.append(e)
            ident.append(k)
        if log_fn and (k + 1) % 500 == 0:
            log_fn(dict(rendered_identities=k + 1))
    targets = np.concatenate([_targets(r) for r in rows])
    return dict(frames=np.stack(frames), targets=targets, emotion=np.asarray(emotion, np.int32),
                identity=np.asarray(ident, np.int32))


def _augment(x: jax.Array, key: jax.Array) -> jax.Array:
    """Photometric augmentation of images [B, S, S, 3] in [-1, 1]: per-image brightness,
    contrast and channel gains, and a random mix towards a blurred copy (generated videos are
    softer than SynthTalk's renders). Nothing geometric: pose and position are targets."""
    b = x.shape[0]
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    y = (x + 1.0) / 2.0
    gain = 1.0 + jax.random.uniform(k1, (b, 1, 1, 3), minval=-0.08, maxval=0.08)
    bright = 1.0 + jax.random.uniform(k2, (b, 1, 1, 1), minval=-0.15, maxval=0.15)
    contrast = 1.0 + jax.random.uniform(k3, (b, 1, 1, 1), minval=-0.2, maxval=0.2)
    mean = jnp.mean(y, axis=(1, 2, 3), keepdims=True)
    y = (mean + contrast * (y - mean)) * bright * gain
    taps = jnp.asarray([0.0625, 0.25, 0.375, 0.25, 0.0625], y.dtype)   # binomial, σ ≈ 1 px
    w = jax.random.uniform(k4, (b, 1, 1, 1)) * (jax.random.uniform(k5, (b, 1, 1, 1)) < 0.5)
    y = (1.0 - w) * y + w * _blur5(y, taps)
    return jnp.clip(y, 0.0, 1.0) * 2.0 - 1.0


def _blur5(y: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable 5-tap blur of [B, H, W, C] (edges repeated)."""
    p = jnp.pad(y, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    h, w = y.shape[1:3]
    rows = sum(taps[i] * p[:, i:i + h, :, :] for i in range(5))
    return sum(taps[i] * rows[:, :, i:i + w, :] for i in range(5))


def train_oracle(config: Mapping[str, Any], out_dir: str, log_fn=None) -> dict:
    """Trains the oracle on frames of the evaluators' train identities (`training_frames`);
    measures it on held-out identities; writes out_dir/net.json (+ metrics) and the parameters.

    config: image_size, channels, blocks, hidden, id_dim, resolution, identities,
    frames_per_identity, tracks, track_frames, blink_fraction, augment, test_identities,
    test_frames, steps, batch (even: pairs of frames of one face), lr, id_temperature,
    id_weight, seed (configs/eval.py)."""
    import time

    import optax

    from vasa_jax.losses import motion_contrastive_loss as contrastive_loss

    cfg = dict(config)
    ocfg = OracleConfig(image_size=cfg["image_size"], channels=tuple(cfg["channels"]),
                        hidden=cfg["hidden"], id_dim=cfg["id_dim"],
                        blocks=int(cfg.get("blocks", 1)))
    fpi = int(cfg["frames_per_identity"])
    if fpi < 2:
        raise ConfigError("oracle.frames_per_identity must be ≥ 2: the identity loss pairs two "
                          "frames of each face")
    t0 = time.perf_counter()
    data = training_frames(cfg["identities"], cfg["frames_per_identity"], cfg["tracks"],
                           cfg["track_frames"], cfg["resolution"], cfg["seed"],
                           cfg.get("blink_fraction", 0.15), log_fn)
    frames = _prep(data["frames"], ocfg.image_size)
    targets, emotion = data["targets"], data["emotion"]
    render_s = time.perf_counter() - t0

    net = OracleNet(ocfg, rngs=nnx.Rngs(cfg["seed"]))
    graphdef, params = nnx.split(net)
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg["lr"], max(1, min(50, cfg["steps"] // 10)), max(2, cfg["steps"]))
    tx = optax.adam(sched)
    opt = tx.init(params)
    augment = bool(cfg.get("augment", True))
    weights = jnp.asarray(np.concatenate([np.full(w, WEIGHTS.get(n, 1.0), np.float32)
                                          for n, (w, _, _) in TARGETS.items()]))
    temp = float(cfg["id_temperature"])

    def loss_fn(params, x, y, e):
        o = nnx.merge(graphdef, params)(x)
        reg = jnp.mean(weights * (o["regress"] - y) ** 2) / jnp.mean(weights)
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(o["emotion"]), e[:, None], 1))
        # Identity: rows 2k and 2k+1 are two frames of one face (other pose, emotion, mouth);
        # symmetric InfoNCE between the two halves — scales to any number of identities.
        z = o["identity"]
        idl = contrastive_loss(z[0::2], z[1::2], temp)
        return reg + ce + cfg["id_weight"] * idl, (reg, ce, idl)

    @jax.jit
    def step(params, opt, x, y, e, key):
        x = x.astype(jnp.float32) / 127.5 - 1.0
        if augment:
            x = _augment(x, key)
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, e)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss, aux

    rng = np.random.default_rng(cfg["seed"])
    key = jax.random.key(int(cfg["seed"]))
    history = []
    t1 = time.perf_counter()
    for s in range(1, cfg["steps"] + 1):
        who = rng.choice(int(cfg["identities"]), cfg["batch"] // 2, replace=False)
        pair = np.stack([rng.choice(fpi, 2, replace=False) for _ in who])
        idx = (who[:, None] * fpi + pair).reshape(-1)          # identity k's frames: k·fpi + j
        params, opt, loss, (reg, ce, idl) = step(params, opt, frames[idx], targets[idx],
                                                 emotion[idx], jax.random.fold_in(key, s))
        if s % 50 == 0 or s == cfg["steps"]:
            history.append(dict(step=s, loss=float(loss), regress=float(reg), emotion=float(ce),
                                identity=float(idl)))
            if log_fn:
                log_fn(history[-1])
    train_s = time.perf_counter() - t1
    net = nnx.merge(graphdef, params)
    oracle = Oracle(net)
    metrics = dict(train=dict(history[-1], frames=int(len(frames)),
                              render_seconds=round(render_s, 1), train_seconds=round(train_s, 1)),
                   held_out=oracle_accuracy(oracle, held_out_clips(cfg)))
    from vasa_jax.eval.evaluators import save_params

    save_params(out_dir, net, dict(kind="synthtalk_oracle", config=dataclasses.asdict(ocfg),
                                   train=dict(cfg), metrics=metrics))
    return metrics


def held_out_clips(config: Mapping[str, Any]) -> list[dict]:
    """The oracle's held-out clips for a config (test_identities, test_frames, resolution,
    seed): two clips per identity (identity matching needs a gallery and a query clip)."""
    from vasa_jax.eval import evaluators

    return evaluators.render_clips("held_out", config["test_identities"] * 2,
                                   config["test_frames"], config["resolution"],
                                   config["seed"] + 1, clips_per_identity=2)


def oracle_accuracy(oracle: Oracle, clips: list[dict]) -> dict:
    """Per-factor accuracy on clips (ideally of identities the oracle never saw): mean absolute
    error, R², emotion accuracy (per frame and per clip by majority), identity matching
    (nearest centroid of each identity's first clip)."""
    from vasa_jax.eval import pose_metrics as pm
    from vasa_jax.eval.face_latent import r2_score
    from vasa_jax.train.identity import clip_matching_accuracy

    reads = [oracle(c["frames"]) for c in clips]
    out = {}
    for name in TARGETS:
        y = np.concatenate([np.asarray(c[name], np.float64).reshape(len(c["frames"]), -1)
                            for c in clips])
        p = np.concatenate([np.asarray(r[name], np.float64).reshape(-1, y.shape[1])
                            for r in reads])
        r2 = r2_score(y, p)
        out[name] = dict(mae=[float(v) for v in np.mean(np.abs(y - p), 0)],
                         r2=[float(v) for v in r2])
    gaze_err = [pm.gaze_error_deg(c["gaze"], r["gaze"]) for c, r in zip(clips, reads)]
    out["gaze"]["angular_error_deg"] = float(np.mean(gaze_err))
    frame_acc = np.concatenate([r["emotion_logits"].argmax(-1) == c["emotion"]
                                for c, r in zip(clips, reads)])
    clip_acc = [pm.majority_emotion(r["emotion_logits"]) == c["emotion"]
                for c, r in zip(clips, reads)]
    out["emotion"] = dict(frame_accuracy=float(frame_acc.mean()),
                          clip_accuracy=float(np.mean(clip_acc)), chance=1.0 / EMOTIONS)
    emb = np.concatenate([r["identity"] for r in reads])
    idn = np.concatenate([np.full(len(c["frames"]), c["identity"]) for c in clips])
    clip_no = np.concatenate([np.full(len(c["frames"]), c["clip"]) for c in clips])
    out["identity"] = clip_matching_accuracy(emb, idn, clip_no)
    out["clips"] = len(clips)
    out["identities"] = int(len(np.unique(idn)))
    return out
