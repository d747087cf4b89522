"""CAPP (VASA-1's Contrastive Audio and Pose Pretraining): how well a head-pose sequence goes
with its speech.

    capp = CAPP.load("EVAL/capp")                 # or train_capp(config, "EVAL/capp")
    capp.score(audio, pose)                       # 16 kHz [N], pose [T, 5] → mean cosine

As published: an audio encoder and a 6-layer transformer over the pose sequence, each mapped to
one unit vector per 3-second window (75 frames at 25 fps), trained with the CLIP loss
(symmetric cross-entropy over the batch's audio × pose cosines, learned temperature). The
score of a clip is the mean cosine between its audio and pose embeddings over its 3-s windows
(hop `hop` frames). Pose here is yaw, pitch, roll (degrees) and the projected head position (x,
y), what the SynthTalk oracle reads from frames; audio is our log-mel front end (80 bands per
video frame) followed by a 2-layer transformer (VASA-1 used a pretrained Wav2Vec2, which
cannot be downloaded here).

Three choices make the score sensitive to timing (`configs/eval.py:tiny`; a pooled-only CAPP
trained on random in-batch negatives scored a pose 4 frames off as high as the aligned one):
each tower's embedding is its mean-pooled vector followed by `frame_dim` features per frame,
normalised together, so the cosine contains Σ_t a_t·p_t (a zero-lag cross-correlation); the
pose tower sees the pose and its frame-to-frame velocity (onsets, not levels); and the CLIP
loss gets hard negatives — the same window's pose moved by ±2…±8 frames against its audio.

Training data is SynthTalk speech + head motion of the evaluators' own identities (no frames
need rendering: `evaluators.render_clips(..., render=False)`); `validate` reproduces the paper's
check: the score falls as the audio is shifted against the pose by ±1…±4 frames, and as the pose
variation is scaled away from ×1.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError
from vasa_jax.models.identity_net import l2_normalize
from vasa_jax.models.motion_dit import EncoderBlock

log = logging.getLogger(__name__)

WINDOW = 75             # 3 s at 25 fps
POSE_DIM = 5            # yaw, pitch, roll (deg), translation x, y
POSE_SCALE = np.asarray([15.0, 15.0, 15.0, 0.2, 0.2], np.float32)
MEL_MEAN, MEL_STD = -6.0, 4.0
VELOCITY_GAIN = 4.0     # frame differences of the scaled pose are ≈ 4× smaller than the pose


@dataclasses.dataclass(frozen=True)
class CAPPConfig:
    width: int = 64
    heads: int = 4
    pose_layers: int = 6
    audio_layers: int = 2
    embed_dim: int = 64
    window: int = WINDOW
    n_mels: int = 80
    # Per-frame part of the embedding: frame_dim features per frame, concatenated (after the
    # pooled embed_dim) before the unit normalisation, so the cosine includes Σ_t a_t·p_t —
    # a zero-lag cross-correlation that timing can move. 0: pooled only (the first design).
    frame_dim: int = 0
    # Feed pose velocity (frame differences) as well as pose: onsets, not levels.
    velocity: bool = False


class _SeqEncoder(nnx.Module):
    def __init__(self, in_dim: int, width: int, heads: int, layers: int, window: int,
                 embed_dim: int, frame_dim: int = 0, *, rngs: nnx.Rngs):
        self.inp = nnx.Linear(in_dim, width, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (window, width)))
        self.blocks = nnx.List([EncoderBlock(width, heads, 4.0, rngs=rngs)
                                for _ in range(layers)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.out = nnx.Linear(width, embed_dim, rngs=rngs)
        self.frame_out = nnx.Linear(width, frame_dim, rngs=rngs) if frame_dim else None

    def __call__(self, x):
        """x [B, W, in_dim] → unit embedding [B, embed_dim + W·frame_dim]."""
        h = self.inp(x) + self.pos[...][None, :x.shape[1]]
        for b in self.blocks:
            h = b(h)
        h = self.norm(h)
        e = self.out(jnp.mean(h, axis=1))
        if self.frame_out is not None:
            e = jnp.concatenate([e, self.frame_out(h).reshape(h.shape[0], -1)], axis=1)
        return l2_normalize(e)


class CAPPNet(nnx.Module):
    def __init__(self, config: CAPPConfig, *, rngs: nnx.Rngs):
        self.config = c = config
        self.audio_enc = _SeqEncoder(c.n_mels, c.width, c.heads, c.audio_layers, c.window,
                                     c.embed_dim, c.frame_dim, rngs=rngs)
        self.pose_enc = _SeqEncoder(POSE_DIM * (2 if c.velocity else 1), c.width, c.heads,
                                    c.pose_layers, c.window, c.embed_dim, c.frame_dim,
                                    rngs=rngs)
        self.log_scale = nnx.Param(jnp.asarray(np.log(1 / 0.07), jnp.float32))

    def embed_audio(self, mel: jax.Array) -> jax.Array:
        """mel [B, W, 80] (log-mel) → unit embeddings [B, D]."""
        return self.audio_enc((mel - MEL_MEAN) / MEL_STD)

    def embed_pose(self, pose: jax.Array) -> jax.Array:
        """pose [B, W, 5] (raw units) → unit embeddings [B, D]."""
        p = pose - jnp.mean(pose, axis=1, keepdims=True)  # the window's rest pose is not motion
        p = p / jnp.asarray(POSE_SCALE)
        if self.config.velocity:
            v = jnp.diff(p, axis=1, prepend=p[:, :1])
            p = jnp.concatenate([p, VELOCITY_GAIN * v], axis=-1)
        return self.pose_enc(p)

    def __call__(self, mel: jax.Array, pose: jax.Array):
        """mel [B, W, 80] (log-mel), pose [B, W, 5] (raw units) → unit embeddings [B, D] each."""
        return self.embed_audio(mel), self.embed_pose(pose)


def clip_loss(a: jax.Array, p: jax.Array, log_scale: jax.Array,
              p_shifted: jax.Array | None = None) -> jax.Array:
    """Symmetric CLIP cross-entropy of the [B, B] scaled cosine matrix (matches on the diagonal).

    p_shifted [B, K, D]: optional hard negatives — row i's own pose shifted in time against its
    audio — added to audio i's candidates (the audio → pose direction), so that the embedding
    has to tell the aligned pose from the same motion a few frames early or late."""
    scale = jnp.exp(jnp.minimum(log_scale, np.log(100.0)))
    logits = scale * a @ p.T
    labels = jnp.arange(a.shape[0])
    lp = -jnp.mean(jax.nn.log_softmax(logits, 0)[labels, labels])
    if p_shifted is not None:
        hard = scale * jnp.einsum("bd,bkd->bk", a, p_shifted)
        logits = jnp.concatenate([logits, hard], axis=1)
    la = -jnp.mean(jax.nn.log_softmax(logits, 1)[labels, labels])
    return (la + lp) / 2


def mel_features(audio: np.ndarray) -> np.ndarray:
    """16 kHz samples [N] → log-mel [N // 640, 80]."""
    from vasa_jax.models.audio import log_mel

    return np.asarray(log_mel(jnp.asarray(np.asarray(audio, np.float32))[None]))[0]


def pose_of(clip: Mapping[str, np.ndarray]) -> np.ndarray:
    """SynthTalk factors (or an oracle reading) → pose [T, 5] (rotation, translation)."""
    return np.concatenate([np.asarray(clip["rotation"], np.float32).reshape(-1, 3),
                           np.asarray(clip["translation"], np.float32).reshape(-1, 2)], 1)


class CAPP:
    """A trained CAPPNet with jitted window embedding and the clip score."""

    def __init__(self, net: CAPPNet, meta: dict | None = None):
        self.net, self.meta = net, meta or {}
        self.config = net.config
        graphdef, self.state = nnx.split(net)

        @jax.jit
        def embed(state, mel, pose):
            a, p = nnx.merge(graphdef, state)(mel, pose)
            return jnp.sum(a * p, -1)

        self._cos = embed

    @classmethod
    def load(cls, directory: str) -> "CAPP":
        from vasa_jax.eval.evaluators import load_params

        net, meta = load_params(directory, "capp", lambda m: CAPPNet(CAPPConfig(**m["config"]),
                                                                       rngs=nnx.Rngs(0)))
        return cls(net, meta)

    def window_starts(self, t: int, hop: int) -> list[int]:
        w = self.config.window
        if t < w:
            raise ConfigError(f"CAPP scores 3-s windows ({w} frames); the clip has {t} frames: "
                              "give clips of at least 3 s")
        return list(range(0, t - w + 1, hop))

    def score_features(self, mel: np.ndarray, pose: np.ndarray, hop: int = 25) -> float:
        """mel [T, 80], pose [T, 5] → mean cosine over the 3-s windows."""
        t = min(len(mel), len(pose))
        w = self.config.window
        starts = self.window_starts(t, hop)
        m = np.stack([mel[s:s + w] for s in starts])
        p = np.stack([pose[s:s + w] for s in starts])
        return float(np.mean(np.asarray(self._cos(self.state, jnp.asarray(m), jnp.asarray(p)))))

    def score(self, audio: np.ndarray, pose: np.ndarray, hop: int = 25) -> float:
        return self.score_features(mel_features(audio), np.asarray(pose, np.float32), hop)


def _batches(mels, poses, rng, batch: int, window: int, shifts: tuple = ()):
    """Random 3-s windows → mel [B, W, 80], pose [B, W, 5] and, with `shifts` (frames), the same
    clip's pose window moved by each of len(shifts) shifts drawn from them: [B, K, W, 5]."""
    k = len(shifts)
    reach = max((abs(int(d)) for d in shifts), default=0)
    ci = rng.integers(0, len(mels), batch)
    m, p, q = [], [], []
    for c in ci:
        t = min(len(mels[c]), len(poses[c]))
        if t - window - 2 * reach < 0:
            raise ConfigError(f"CAPP training clips have {t} frames: a {window}-frame window "
                              f"shifted by ±{reach} needs {window + 2 * reach}")
        s = int(rng.integers(reach, t - window - reach + 1))
        m.append(mels[c][s:s + window])
        p.append(poses[c][s:s + window])
        if k:
            q.append(np.stack([poses[c][s + int(d):s + int(d) + window] for d in shifts]))
    return np.stack(m), np.stack(p), (np.stack(q) if k else None)


def train_capp(config: Mapping[str, Any], out_dir: str, log_fn=None) -> dict:
    """Trains CAPP on SynthTalk speech + head motion of the evaluators' train identities and
    validates it on held-out identities (`validate`); writes out_dir/net.json + parameters.

    config: width, heads, pose_layers, audio_layers, embed_dim, clips, frames, steps, batch,
    lr, test_clips, seed, optional max_minutes (wall-clock budget; stops early, the run's
    metrics record the step reached) (configs/eval.py)."""
    import optax

    from vasa_jax.eval import evaluators

    cfg = dict(config)
    ccfg = CAPPConfig(width=cfg["width"], heads=cfg["heads"], pose_layers=cfg["pose_layers"],
                      audio_layers=cfg["audio_layers"], embed_dim=cfg["embed_dim"],
                      frame_dim=int(cfg.get("frame_dim", 0)),
                      velocity=bool(cfg.get("velocity", False)))
    shifts = tuple(int(d) for d in cfg.get("hard_shifts") or ())
    clips = evaluators.render_clips("train", cfg["clips"], cfg["frames"], 64, cfg["seed"],
                                    clips_per_identity=1, render=False)
    mels = [mel_features(c["audio"]) for c in clips]
    poses = [pose_of(c) for c in clips]
    net = CAPPNet(ccfg, rngs=nnx.Rngs(cfg["seed"]))
    graphdef, params = nnx.split(net)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(
        0.0, cfg["lr"], max(1, min(50, cfg["steps"] // 10)), max(2, cfg["steps"])),
                     weight_decay=1e-4)
    opt = tx.init(params)

    def loss_fn(params, m, p, q):
        model = nnx.merge(graphdef, params)
        if q is None:
            a, e = model(m, p)
            return clip_loss(a, e, model.log_scale[...])
        b, k = q.shape[:2]
        a = model.embed_audio(m)
        e = model.embed_pose(jnp.concatenate([p, q.reshape(b * k, *q.shape[2:])]))  # one pass
        return clip_loss(a, e[:b], model.log_scale[...], e[b:].reshape(b, k, -1))

    @jax.jit
    def step(params, opt, m, p, q):
        loss, g = jax.value_and_grad(loss_fn)(params, m, p, q)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    rng = np.random.default_rng(cfg["seed"])
    history = []
    budget_s = 60.0 * float(cfg.get("max_minutes") or 0.0)   # 0: no wall-clock budget
    start = time.perf_counter()
    for s in range(1, cfg["steps"] + 1):
        # Each row gets n_hard of the hard-negative shifts (a fresh draw every step).
        drawn = (tuple(rng.choice(shifts, size=int(cfg.get("n_hard", 2)), replace=False))
                 if shifts else ())
        m, p, q = _batches(mels, poses, rng, cfg["batch"], ccfg.window, drawn)
        params, opt, loss = step(params, opt, jnp.asarray(m), jnp.asarray(p),
                                 None if q is None else jnp.asarray(q))
        out_of_time = budget_s > 0 and time.perf_counter() - start > budget_s
        if s % 50 == 0 or s == cfg["steps"] or out_of_time:
            history.append(dict(step=s, loss=float(loss)))
            if log_fn:
                log_fn(history[-1])
        if out_of_time:
            break
    capp = CAPP(nnx.merge(graphdef, params))
    held = evaluators.render_clips("held_out", cfg["test_clips"], cfg["frames"], 64,
                                   cfg["seed"] + 1, clips_per_identity=1, render=False)
    metrics = dict(train=history[-1], held_out=validate(capp, held))
    from vasa_jax.eval.evaluators import save_params

    save_params(out_dir, capp.net, dict(kind="capp", config=dataclasses.asdict(ccfg),
                                        train=dict(cfg), metrics=metrics))
    return metrics


def shift_pose(pose: np.ndarray, frames: int) -> np.ndarray:
    """Pose delayed by `frames` against its audio (edge frames repeated), same length."""
    if frames == 0:
        return pose
    idx = np.clip(np.arange(len(pose)) - frames, 0, len(pose) - 1)
    return pose[idx]


def scale_variation(pose: np.ndarray, factor: float, window: int = WINDOW) -> np.ndarray:
    """Pose variation about its running 3-s mean scaled by `factor`."""
    mean = np.mean(pose, axis=0, keepdims=True)
    return mean + factor * (pose - mean)


def validate(capp: CAPP, clips: list[dict], shifts=(-4, -3, -2, -1, 0, 1, 2, 3, 4),
             scales=(0.0, 0.5, 1.0, 1.5, 2.0)) -> dict:
    """The paper's check on held-out clips: mean score vs audio–pose shift (frames) and vs pose
    variation scale, plus retrieval: how often a clip's own pose scores higher than another
    clip's pose with its audio (2-way accuracy)."""
    mels = [mel_features(c["audio"]) for c in clips]
    poses = [pose_of(c) for c in clips]
    by_shift = {int(d): float(np.mean([capp.score_features(m, shift_pose(p, d))
                                       for m, p in zip(mels, poses)])) for d in shifts}
    by_scale = {float(s): float(np.mean([capp.score_features(m, scale_variation(p, s))
                                         for m, p in zip(mels, poses)])) for s in scales}
    own = [capp.score_features(m, p) for m, p in zip(mels, poses)]
    other = [capp.score_features(m, poses[(i + 1) % len(poses)]) for i, m in enumerate(mels)]
    return dict(score_by_shift=by_shift, score_by_scale=by_scale,
                matched_vs_other=float(np.mean(np.asarray(own) > np.asarray(other))),
                mean_matched=float(np.mean(own)), mean_other=float(np.mean(other)),
                clips=len(clips))
