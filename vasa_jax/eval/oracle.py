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

Network: four stride-2 3×3 conv stages (GroupNorm, SiLU) on the frame resized to `image_size`,
flatten (the layout matters: pose and gaze are positions), a 256-unit trunk, and linear heads —
regression of the standardised factors (mean squared error), emotion (cross-entropy) and an
identity embedding trained with the ArcFace head (additive angular margin) over the train
identities.
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
from vasa_jax.models.identity_net import ArcFaceHead, identity_logits, l2_normalize

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


@dataclasses.dataclass(frozen=True)
class OracleConfig:
    image_size: int = 64
    channels: tuple = (32, 64, 96, 128)
    hidden: int = 256
    id_dim: int = 64


class OracleNet(nnx.Module):
    def __init__(self, config: OracleConfig, *, rngs: nnx.Rngs):
        self.config = config
        chans = tuple(config.channels)
        cins = (3, *chans[:-1])
        self.convs = nnx.List([nnx.Conv(ci, co, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                                        rngs=rngs) for ci, co in zip(cins, chans)])
        self.norms = nnx.List([nnx.GroupNorm(co, num_groups=min(8, co // 4), rngs=rngs)
                               for co in chans])
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


def train_oracle(config: Mapping[str, Any], out_dir: str, log_fn=None) -> dict:
    """Trains the oracle on frames of the evaluators' train identities; measures it on held-out
    identities; writes out_dir/net.json (+ metrics) and the parameters.

    config: image_size, channels, hidden, id_dim, resolution, identities, clips_per_identity,
    frames, stride (train frames are every stride-th frame), test_identities, steps, batch, lr,
    margin, scale, seed (configs/eval.py)."""
    import optax

    from vasa_jax.eval import evaluators

    cfg = dict(config)
    ocfg = OracleConfig(image_size=cfg["image_size"], channels=tuple(cfg["channels"]),
                        hidden=cfg["hidden"], id_dim=cfg["id_dim"])
    cpi = int(cfg["clips_per_identity"])
    clips = evaluators.render_clips("train", cfg["identities"] * cpi, cfg["frames"],
                                    cfg["resolution"], cfg["seed"], clips_per_identity=cpi,
                                    stride=int(cfg.get("stride", 1)))
    frames = _prep(np.concatenate([c["frames"] for c in clips]), ocfg.image_size)
    targets = np.concatenate([_targets(c) for c in clips])
    emotion = np.concatenate([np.full(len(c["frames"]), c["emotion"]) for c in clips])
    ids = {i: k for k, i in enumerate(sorted({c["identity"] for c in clips}))}
    ident = np.concatenate([np.full(len(c["frames"]), ids[c["identity"]]) for c in clips])

    rngs = nnx.Rngs(cfg["seed"])
    net = OracleNet(ocfg, rngs=rngs)
    head = ArcFaceHead(ocfg.id_dim, len(ids), rngs=rngs)
    graphdef, params = nnx.split((net, head))
    sched = optax.warmup_cosine_decay_schedule(
        0.0, cfg["lr"], max(1, min(50, cfg["steps"] // 10)), max(2, cfg["steps"]))
    tx = optax.adam(sched)
    opt = tx.init(params)

    def loss_fn(params, x, y, e, i):
        net, head = nnx.merge(graphdef, params)
        o = net(x)
        reg = jnp.mean((o["regress"] - y) ** 2)
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(o["emotion"]), e[:, None], 1))
        logits = identity_logits(head.cosines(o["identity"]), i, cfg["margin"], cfg["scale"])
        idl = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), i[:, None], 1))
        return reg + ce + 0.2 * idl, (reg, ce, idl)

    @jax.jit
    def step(params, opt, x, y, e, i):
        x = x.astype(jnp.float32) / 127.5 - 1.0
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, e, i)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss, aux

    rng = np.random.default_rng(cfg["seed"])
    history = []
    for s in range(1, cfg["steps"] + 1):
        idx = rng.integers(0, len(frames), cfg["batch"])
        params, opt, loss, (reg, ce, idl) = step(params, opt, frames[idx], targets[idx],
                                                 emotion[idx].astype(np.int32),
                                                 ident[idx].astype(np.int32))
        if s % 50 == 0 or s == cfg["steps"]:
            history.append(dict(step=s, loss=float(loss), regress=float(reg), emotion=float(ce),
                                identity=float(idl)))
            if log_fn:
                log_fn(history[-1])
    net, _ = nnx.merge(graphdef, params)
    oracle = Oracle(net)
    # Held-out: two clips per identity (identity matching needs a gallery and a query clip).
    held = evaluators.render_clips("held_out", cfg["test_identities"] * 2, cfg["frames"],
                                   cfg["resolution"], cfg["seed"] + 1, clips_per_identity=2)
    metrics = dict(train=history[-1], held_out=oracle_accuracy(oracle, held))
    from vasa_jax.eval.evaluators import save_params

    save_params(out_dir, net, dict(kind="synthtalk_oracle", config=dataclasses.asdict(ocfg),
                                   train=dict(cfg), metrics=metrics))
    return metrics


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
