"""Stage-2 motion generator: VASA-1's diffusion transformer over windows of motion latents.

Layouts (time-major per sample, features last):
  x_t       [B, W, Dx]  noisy motion X = [z_pose (7), z_dyn] of the W frames of the window
  t         [B]         diffusion step (int or float; only its sinusoidal embedding is used)
  audio     [B, W, Da]  per-frame audio features aligned with x_t (25 fps)
  x_pre     [B, K, Dx]  clean motion of the K frames before the window (previous window's tail)
  a_pre     [B, K, Da]  audio features of those K frames
  gaze      [B, 2]      main gaze direction (θ, φ)
  distance  [B, 1]      normalised head-to-camera distance
  emotion   [B, E]      emotion vector (one-hot, probabilities or an offset)
  returns   [B, W, Dx]  predicted clean motion x̂₀ (the model predicts X₀, not noise)

Token sequence (full attention, pre-LN encoder):
  [ step | gaze | distance | emotion | K history tokens | W main tokens ]  + learned positions
  history token k = P_x^pre(x_pre[k]) + P_a^pre(a_pre[k])
  main token i    = P_x(x_t[i]) + P_a(audio[i])
The output is a final LayerNorm + a zero-initialised linear map read from the W main tokens,
so a freshly built model predicts x̂₀ = 0 everywhere.

Classifier-free guidance: each condition in CONDITIONS has a learned null embedding that
replaces its token(s) where the condition is dropped:
  drop[c]        bool [B] (True = dropped); drop["audio"] may also be [B, W] (per frame)
  audio_valid    bool [B, W] False → that frame's audio embedding is the null (audio cut)
  history_valid  bool [B] or [B, K] False → history null (first window of a clip, or
                 history positions before the clip start, e.g. the pipeline's history_mask)
`sample_drop_masks` / `sample_audio_cut` draw the training masks; `guided_x0` evaluates the
conditional and every "c dropped" variant in one batched call and combines them:
  x̂₀ = (1 + Σ_c λ_c) · H(X_t, t, C) − Σ_c λ_c · H(X_t, t, C | c = ∅).

Use functionally:
    model = build_model(config.model, nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    x0 = nnx.merge(graphdef, state)(x_t, t, audio, x_pre, a_pre, gaze, distance, emotion,
                                    drop=masks)   # inside jax.jit
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import check

CONDITIONS = ("audio", "gaze", "distance", "emotion", "history")
DEFAULT_DROP_PROBS = {"audio": 0.1, "gaze": 0.1, "distance": 0.1, "emotion": 0.1, "history": 0.5}
NUM_COND_TOKENS = 4  # step, gaze, distance, emotion
GAZE_DIM = 2
DISTANCE_DIM = 1

_INT_FIELDS = ("motion_dim", "audio_dim", "emotion_dim", "window", "history", "width", "depth",
               "heads")
_ZERO_OK = ("history",)
# Keys of the condition dict taken by `guided_x0` (the model's keyword arguments).
_COND_INPUTS = ("audio", "x_pre", "a_pre", "gaze", "distance", "emotion")


# ----------------------------------------------------------------------------- config

def _field(cfg: Any, name: str, default: Any = None) -> Any:
    """cfg.name for a ConfigDict, a Mapping or a dataclass; `default` when absent."""
    if isinstance(cfg, Mapping) or hasattr(cfg, "keys"):
        return cfg[name] if name in cfg else default
    return getattr(cfg, name, default)


def check_model_config(cfg: Any) -> None:
    """Raises ConfigError (one line naming the field) on a bad motion `model` config."""
    for f in _INT_FIELDS:
        v = _field(cfg, f)
        check(v is not None, f"model.{f} is missing: add it to the motion model config")
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
        lo = 0 if f in _ZERO_OK else 1
        check(ok and v >= lo, f"model.{f}={v!r} is invalid: use an integer >= {lo}")
    width, heads = _field(cfg, "width"), _field(cfg, "heads")
    check(width % heads == 0,
          f"model.width={width} is not divisible by model.heads={heads}: change one of them")
    mlp_ratio = _field(cfg, "mlp_ratio")
    check(mlp_ratio is not None and float(mlp_ratio) > 0 and int(width * mlp_ratio) >= 1,
          f"model.mlp_ratio={mlp_ratio!r} is invalid: use a positive number (4.0 is usual)")
    freq = _field(cfg, "time_freq_dim", 256)
    check(isinstance(freq, (int, np.integer)) and freq >= 2 and freq % 2 == 0,
          f"model.time_freq_dim={freq!r} is invalid: use an even integer >= 2")


# ----------------------------------------------------------------------------- embeddings

def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding of diffusion steps t [B] (int or float) → [B, dim] = [cos | sin]
    at frequencies max_period^(−i/(dim/2)), i = 0 … dim/2 − 1."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _linear(in_f: int, out_f: int, rngs: nnx.Rngs, zero: bool = False) -> nnx.Linear:
    init = nnx.initializers.zeros if zero else nnx.initializers.xavier_uniform()
    return nnx.Linear(in_f, out_f, kernel_init=init, bias_init=nnx.initializers.zeros,
                      rngs=rngs)


def _embedding(rngs: nnx.Rngs, *shape: int) -> nnx.Param:
    return nnx.Param(0.02 * jax.random.normal(rngs.params(), shape, jnp.float32))


class TimestepEmbedder(nnx.Module):
    """t [B] → [B, width]: sinusoidal features then a SiLU MLP."""

    def __init__(self, width: int, freq_dim: int, *, rngs: nnx.Rngs):
        self.freq_dim = freq_dim
        self.fc1 = _linear(freq_dim, width, rngs)
        self.fc2 = _linear(width, width, rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.fc2(nnx.silu(self.fc1(timestep_embedding(t, self.freq_dim))))


# ----------------------------------------------------------------------------- transformer

class SelfAttention(nnx.Module):
    """Full (unmasked) multi-head self-attention on [B, T, width]."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = _linear(width, 3 * width, rngs)
        self.out = _linear(width, width, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, c = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3 * self.heads, c // self.heads), 3,
                            axis=2)  # each [B, T, heads, head_dim]
        return self.out(jax.nn.dot_product_attention(q, k, v).reshape(b, n, c))


class EncoderBlock(nnx.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (GELU)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, *, rngs: nnx.Rngs):
        hidden = int(width * mlp_ratio)
        self.norm1 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.attn = SelfAttention(width, heads, rngs=rngs)
        self.norm2 = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.fc1 = _linear(width, hidden, rngs)
        self.fc2 = _linear(hidden, width, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x)), approximate=True))


# ----------------------------------------------------------------------------- model

def _row_mask(mask: jax.Array | None, batch: int) -> jax.Array:
    """None → all False [B]; else the mask as bool ([B], or [B, W] for a per-frame audio mask)."""
    if mask is None:
        return jnp.zeros((batch,), bool)
    return jnp.asarray(mask, bool)


class MotionDiT(nnx.Module):
    """VASA-1 motion diffusion transformer; see the module docstring for shapes and tokens."""

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs):
        check_model_config(cfg)
        self.motion_dim = int(_field(cfg, "motion_dim"))
        self.audio_dim = int(_field(cfg, "audio_dim"))
        self.emotion_dim = int(_field(cfg, "emotion_dim"))
        self.window = int(_field(cfg, "window"))
        self.history = int(_field(cfg, "history"))
        width = self.width = int(_field(cfg, "width"))
        heads, depth = int(_field(cfg, "heads")), int(_field(cfg, "depth"))
        mlp_ratio = float(_field(cfg, "mlp_ratio"))
        freq_dim = int(_field(cfg, "time_freq_dim", 256))

        self.step_embed = TimestepEmbedder(width, freq_dim, rngs=rngs)
        self.gaze_proj = _linear(GAZE_DIM, width, rngs)
        self.distance_proj = _linear(DISTANCE_DIM, width, rngs)
        self.emotion_proj = _linear(self.emotion_dim, width, rngs)
        # History and main tokens get their own maps: clean past frames vs noisy current ones.
        self.x_pre_proj = _linear(self.motion_dim, width, rngs)
        self.a_pre_proj = _linear(self.audio_dim, width, rngs)
        self.x_proj = _linear(self.motion_dim, width, rngs)
        self.audio_proj = _linear(self.audio_dim, width, rngs)
        # Null embeddings (classifier-free guidance): one vector per condition; the audio null
        # replaces a frame's audio embedding, the history null a whole history token.
        self.null_audio = _embedding(rngs, width)
        self.null_gaze = _embedding(rngs, width)
        self.null_distance = _embedding(rngs, width)
        self.null_emotion = _embedding(rngs, width)
        self.null_history = _embedding(rngs, width)
        self.num_tokens = NUM_COND_TOKENS + self.history + self.window
        self.pos_embed = _embedding(rngs, self.num_tokens, width)
        self.blocks = nnx.List([EncoderBlock(width, heads, mlp_ratio, rngs=rngs)
                                for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.head = _linear(width, self.motion_dim, rngs, zero=True)

    def __call__(self, x_t: jax.Array, t: jax.Array, audio: jax.Array,
                 x_pre: jax.Array | None, a_pre: jax.Array | None, gaze: jax.Array,
                 distance: jax.Array, emotion: jax.Array,
                 drop: Mapping[str, jax.Array] | None = None,
                 audio_valid: jax.Array | None = None,
                 history_valid: jax.Array | None = None) -> jax.Array:
        """→ x̂₀ [B, W, Dx]. x_pre/a_pre None (or history 0) means no history at all: every
        row uses the history null. Masks: see the module docstring."""
        b, w, k, width = x_t.shape[0], self.window, self.history, self.width
        drop = dict(drop or {})
        unknown = set(drop) - set(CONDITIONS)
        check(not unknown, f"unknown drop mask(s) {sorted(unknown)}: use keys from {CONDITIONS}")
        chex.assert_shape(x_t, (b, w, self.motion_dim))
        chex.assert_shape(audio, (b, w, self.audio_dim))
        chex.assert_shape(gaze, (b, GAZE_DIM))
        chex.assert_shape(distance, (b, DISTANCE_DIM))
        chex.assert_shape(emotion, (b, self.emotion_dim))
        t = jnp.broadcast_to(jnp.asarray(t), (b,))

        def keep_or_null(emb, null, mask):  # emb [B, width], mask [B] True = null
            return jnp.where(_row_mask(mask, b)[:, None], null[...], emb)

        cond = jnp.stack([
            self.step_embed(t),
            keep_or_null(self.gaze_proj(gaze), self.null_gaze, drop.get("gaze")),
            keep_or_null(self.distance_proj(distance), self.null_distance, drop.get("distance")),
            keep_or_null(self.emotion_proj(emotion), self.null_emotion, drop.get("emotion")),
        ], axis=1)  # [B, 4, width]

        # Audio of the window: null where dropped (per row or per frame) or cut.
        audio_null = jnp.zeros((b, w), bool)
        if drop.get("audio") is not None:
            m = jnp.asarray(drop["audio"], bool)
            audio_null = audio_null | (m[:, None] if m.ndim == 1 else m)
        if audio_valid is not None:
            chex.assert_shape(audio_valid, (b, w))
            audio_null = audio_null | ~jnp.asarray(audio_valid, bool)
        a_emb = jnp.where(audio_null[..., None], self.null_audio[...], self.audio_proj(audio))
        main = self.x_proj(x_t) + a_emb  # [B, W, width]

        tokens = [cond]
        if k > 0:
            if x_pre is None or a_pre is None:
                hist = jnp.broadcast_to(self.null_history[...], (b, k, width))
            else:
                chex.assert_shape(x_pre, (b, k, self.motion_dim))
                chex.assert_shape(a_pre, (b, k, self.audio_dim))
                hist_null = _row_mask(drop.get("history"), b)[:, None]
                if history_valid is not None:
                    hv = jnp.asarray(history_valid, bool)
                    hist_null = hist_null | ~(hv[:, None] if hv.ndim == 1 else hv)
                hist = self.x_pre_proj(x_pre) + self.a_pre_proj(a_pre)
                hist = jnp.where(jnp.broadcast_to(hist_null, (b, k))[..., None],
                                 self.null_history[...], hist)
            tokens.append(hist)
        tokens.append(main)

        x = jnp.concatenate(tokens, axis=1) + self.pos_embed[...][None]  # [B, 4+K+W, width]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -w:]))


def build_model(cfg: Any, rngs: nnx.Rngs) -> MotionDiT:
    """MotionDiT from a motion `model` config (or a full config with a `model` field)."""
    if _field(cfg, "model") is not None and _field(cfg, "motion_dim") is None:
        cfg = _field(cfg, "model")
    return MotionDiT(cfg, rngs=rngs)


def count_params(cfg: Any) -> int:
    """Parameter count of MotionDiT(cfg) from abstract shapes (nothing is allocated)."""
    abstract = nnx.eval_shape(lambda: build_model(cfg, nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    return int(sum(math.prod(x.shape) for x in leaves))


# ----------------------------------------------------------------------------- CFG masks

def sample_drop_masks(rng: jax.Array, batch: int,
                      probs: Mapping[str, float] | None = None) -> dict[str, jax.Array]:
    """Independent per-row condition dropout for CFG training → {condition: bool [batch]}
    (True = dropped). `probs` overrides DEFAULT_DROP_PROBS per condition (p = 0.1 for audio,
    gaze, distance, emotion; 0.5 for history, which covers x_pre and a_pre together)."""
    merged = dict(DEFAULT_DROP_PROBS)
    for name, p in (probs or {}).items():
        check(name in DEFAULT_DROP_PROBS,
              f"unknown condition {name!r} in drop probabilities: use keys from {CONDITIONS}")
        check(0.0 <= float(p) <= 1.0, f"drop probability for {name}={p!r}: use a value in [0, 1]")
        merged[name] = float(p)
    keys = jax.random.split(rng, len(CONDITIONS))
    return {name: jax.random.bernoulli(key, merged[name], (batch,))
            for name, key in zip(CONDITIONS, keys)}


def sample_audio_cut(rng: jax.Array, batch: int, window: int, prob: float) -> jax.Array:
    """"Cut the end of the audio" augmentation → valid bool [batch, window] (True = real audio).

    With probability `prob` a row is cut at a position c uniform in {1, …, window − 1}: frames
    i ≥ c are invalid (null audio), so at least one frame keeps its audio and at least one is
    cut. Other rows (and every row when window = 1) stay all valid."""
    check(0.0 <= float(prob) <= 1.0, f"audio cut probability {prob!r}: use a value in [0, 1]")
    k_cut, k_pos = jax.random.split(rng)
    cut = jax.random.bernoulli(k_cut, prob, (batch,)) & (window > 1)
    pos = jax.random.randint(k_pos, (batch,), 1, max(window, 2))
    pos = jnp.where(cut, pos, window)
    return jnp.arange(window)[None, :] < pos[:, None]


# ----------------------------------------------------------------------------- guidance

def guided_x0(model_or_apply: Callable[..., jax.Array], x_t: jax.Array, t: jax.Array,
              conds: Mapping[str, Any], scales: Mapping[str, float | jax.Array]) -> jax.Array:
    """Multi-condition classifier-free guidance in one batched model call → x̂₀ [B, W, Dx].

    model_or_apply: a MotionDiT, or any function with its call signature (e.g.
      `lambda *a, **kw: nnx.merge(graphdef, state)(*a, **kw)`).
    conds: audio, x_pre, a_pre, gaze, distance, emotion (x_pre/a_pre may be None), and
      optionally drop / audio_valid / history_valid — the base masks of the conditional
      term (e.g. history_valid False on a clip's first window).
    scales: {condition: λ_c} over CONDITIONS. λ may be a traced array; a scale given as a
      Python number equal to 0 is left out statically (its term vanishes), so all-zero Python
      scales cost one plain conditional call and return it exactly.
    The conditional input and its n "c dropped" copies (n = conditions kept above) are stacked
    along the batch axis ([(1 + n)·B, ...]), evaluated in one call, and combined as
      x̂₀ = (1 + Σ λ_c) · H(C) − Σ λ_c · H(C | c = ∅).
    """
    unknown = set(scales) - set(CONDITIONS)
    check(not unknown, f"unknown guidance scale(s) {sorted(unknown)}: use keys from {CONDITIONS}")
    names = [c for c in CONDITIONS  # fixed order
             if c in scales and not (isinstance(scales[c], (int, float)) and scales[c] == 0)]
    n, b = len(names), x_t.shape[0]
    given_drop = dict(conds.get("drop") or {})
    check(not set(given_drop) - set(CONDITIONS),
          f"unknown drop mask(s) {sorted(set(given_drop) - set(CONDITIONS))}: use keys from "
          f"{CONDITIONS}")
    base_drop = {c: _row_mask(given_drop.get(c), b) for c in CONDITIONS}
    extra = set(conds) - set(_COND_INPUTS) - {"drop", "audio_valid", "history_valid"}
    check(not extra, f"unknown condition input(s) {sorted(extra)} for guided_x0")

    def tile(x):
        return None if x is None else jnp.concatenate([jnp.asarray(x)] * (1 + n), axis=0)

    drop = {}
    for c in CONDITIONS:
        variants = [base_drop[c]] + [jnp.ones_like(base_drop[c]) if c == name else base_drop[c]
                                     for name in names]
        drop[c] = jnp.concatenate(variants, axis=0)
    out = model_or_apply(tile(x_t), tile(jnp.broadcast_to(jnp.asarray(t), (b,))),
                         *(tile(conds.get(c)) for c in _COND_INPUTS), drop=drop,
                         audio_valid=tile(conds.get("audio_valid")),
                         history_valid=tile(conds.get("history_valid")))
    out = out.reshape(1 + n, b, *out.shape[1:])
    cond_out = out[0]
    if n == 0:
        return cond_out
    lam = [jnp.asarray(scales[c], out.dtype) for c in names]
    total = sum(lam)
    guided = (1.0 + total) * cond_out
    for i, l in enumerate(lam):
        guided = guided - l * out[1 + i]
    return guided


__all__ = ["CONDITIONS", "DEFAULT_DROP_PROBS", "EncoderBlock", "MotionDiT", "SelfAttention",
           "TimestepEmbedder", "build_model", "check_model_config", "count_params",
           "guided_x0", "sample_audio_cut", "sample_drop_masks", "timestep_embedding"]
