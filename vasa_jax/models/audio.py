"""Audio features for the motion generator, one feature vector per 25 fps video frame.

Audio everywhere in this module is 16 kHz mono float `[B, N]`. A video frame lasts 640 samples
(40 ms): frame `t` covers samples `[640 t, 640 t + 640)` and its centre is sample `640 t + 320`.
Both feature kinds return `[B, T, D]` with `T = N // 640` (trailing samples that do not fill a
whole frame are used only as context, never as an extra frame):

* **log-mel** (`log_mel`, `LogMelFeatures`): one STFT window (periodic Hann, `n_fft` = 1024 by
  default) centred on each frame centre, power spectrum, Slaney-style mel filterbank (80 bands,
  0–8 kHz by default), natural log of `max(mel, 1e-5)`. Where a window reaches past the signal
  it is padded with zeros (`pad_mode="constant"`, the default: silence before and after the
  clip, which is also what a streaming caller sees) or by reflection (`pad_mode="reflect"`).
* **Wav2Vec2** (`Wav2Vec2`, `load_wav2vec2`, `Wav2Vec2Features`): the Hugging Face
  `Wav2Vec2Model` architecture written in Flax NNX, loaded from a checkpoint directory the user
  already has (`config.json` + `model.safetensors` or `pytorch_model.bin`). It runs at 50 Hz
  (hop 320, receptive field 400). To land exactly on the video frames the (optionally
  normalised) audio is zero-padded by `(400 - 320) / 2 = 40` samples at each end, which gives
  exactly `2 T` Wav2Vec2 frames whose centres are `320 j + 160`; each video frame is the mean
  of the two 50 Hz frames `2t, 2t + 1`, whose centres `640 t + 160` and `640 t + 480` lie
  symmetrically about the video frame's centre `640 t + 320`.

`make_audio_features(kind, ...)` picks one by name; both objects expose `feature_dim`,
`num_frames(n)`, a pure `apply(params, audio)` (pass `params` as a jit argument) and a jitted
`__call__(audio)`.

Nothing in this module downloads anything.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError

SAMPLE_RATE = 16_000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


def num_video_frames(num_samples: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> int:
    """Whole video frames in `num_samples` audio samples: `num_samples // samples_per_frame`."""
    return int(num_samples) // int(samples_per_frame)


def _check_audio(audio, who: str) -> None:
    if np.ndim(audio) != 2:
        raise ValueError(f"{who} expects mono audio [B, N] (batch, samples), got shape "
                         f"{tuple(audio.shape)}; add a batch axis with audio[None]")


# ----------------------------------------------------------------------------------- log-mel

def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (as in the Auditory Toolbox): linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    f_break, mel_break = 1000.0, 15.0          # 1000 Hz sits at 15 mel (3 mel per 200 Hz)
    log_step = math.log(6.4) / 27.0            # 27 mel steps per factor 6.4 in frequency
    linear = hz * 3.0 / 200.0
    logarithmic = mel_break + np.log(np.maximum(hz, f_break) / f_break) / log_step
    return np.where(hz >= f_break, logarithmic, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, np.float64)
    f_break, mel_break = 1000.0, 15.0
    log_step = math.log(6.4) / 27.0
    linear = mel * 200.0 / 3.0
    logarithmic = f_break * np.exp(log_step * (np.maximum(mel, mel_break) - mel_break))
    return np.where(mel >= mel_break, logarithmic, linear)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = 1024, n_mels: int = 80,
                   fmin: float = 0.0, fmax: float | None = 8000.0) -> np.ndarray:
    """Triangular mel filters on the rfft bins, area-normalised (Slaney), `[n_fft//2 + 1, n_mels]`.

    Band `m` rises linearly from edge `m` to edge `m+1` and falls to edge `m+2`, where the
    `n_mels + 2` edges are equally spaced on the Slaney mel scale between fmin and fmax; each band
    is scaled by `2 / (edge[m+2] - edge[m])` (in Hz) so all bands have the same area.
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    bins_hz = np.arange(n_fft // 2 + 1, dtype=np.float64) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]      # [n_mels, 1]
    rising = (bins_hz[None, :] - lo) / (mid - lo)
    falling = (hi - bins_hz[None, :]) / (hi - mid)
    tri = np.maximum(0.0, np.minimum(rising, falling))                       # [n_mels, bins]
    tri *= (2.0 / (hi - lo))
    return tri.T.astype(np.float32)


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window of length n (its peak, 1.0, is at index n/2)."""
    k = np.arange(n, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * k / n)).astype(np.float32)


_PAD_MODES = ("constant", "reflect")


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """Log-mel front end. `hop = sample_rate // fps` samples, one frame per video frame."""

    sample_rate: int = SAMPLE_RATE
    fps: int = FPS
    n_fft: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0
    pad_mode: str = "constant"   # "constant" (zeros) or "reflect", only where windows leave the signal
    log_floor: float = 1e-5

    @property
    def hop(self) -> int:
        return self.sample_rate // self.fps

    def validate(self) -> "LogMelConfig":
        if self.sample_rate <= 0 or self.fps <= 0 or self.sample_rate % self.fps:
            raise ConfigError(f"log-mel: sample_rate {self.sample_rate} must be a positive multiple "
                              f"of fps {self.fps} (e.g. 16000 Hz at 25 fps, hop 640)")
        if self.n_fft < 2 or self.n_fft % 2:
            raise ConfigError(f"log-mel: n_fft is {self.n_fft}, expected an even window length "
                              "(e.g. 1024)")
        if self.n_mels < 1:
            raise ConfigError(f"log-mel: n_mels is {self.n_mels}, expected >= 1 (e.g. 80)")
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        if not 0.0 <= self.fmin < fmax <= self.sample_rate / 2:
            raise ConfigError(f"log-mel: need 0 <= fmin < fmax <= sample_rate/2, got fmin "
                              f"{self.fmin}, fmax {self.fmax} at {self.sample_rate} Hz")
        if self.pad_mode not in _PAD_MODES:
            raise ConfigError(f"log-mel: pad_mode is {self.pad_mode!r}, expected one of "
                              f"{list(_PAD_MODES)}")
        if not self.log_floor > 0:
            raise ConfigError(f"log-mel: log_floor is {self.log_floor}, expected > 0 (e.g. 1e-5)")
        return self


def frame_audio(audio: jax.Array, hop: int, n_fft: int, pad_mode: str = "constant") -> jax.Array:
    """[B, N] -> [B, T, n_fft] windows, T = N // hop, window t centred on sample hop*t + hop//2.

    Real samples are used wherever they exist (including the tail past T*hop); the rest is
    padded (zeros or reflection).
    """
    b, n = audio.shape
    t = n // hop
    left = n_fft // 2 - hop // 2            # samples needed before sample 0 (may be negative)
    end = (t - 1) * hop + hop // 2 + n_fft // 2   # one past the last sample the last window needs
    pad_l = max(0, left)
    x = audio[:, max(0, -left):min(n, end)]
    pad_r = max(0, end - n)
    if pad_l or pad_r:
        x = jnp.pad(x, ((0, 0), (pad_l, pad_r)), mode=pad_mode)
    # in x's coordinates window t starts at hop*t (the offset is absorbed by the slicing/padding)
    starts = np.arange(t, dtype=np.int32) * hop
    index = starts[:, None] + np.arange(n_fft, dtype=np.int32)[None, :]
    return x[:, index]


def log_mel(audio: jax.Array, config: LogMelConfig = LogMelConfig()) -> jax.Array:
    """16 kHz mono audio [B, N] -> log-mel [B, N // hop, n_mels] (float32), one frame per video frame."""
    config.validate()
    _check_audio(audio, "log_mel")
    audio = jnp.asarray(audio, jnp.float32)
    b, n = audio.shape
    t = n // config.hop
    if t == 0:
        return jnp.zeros((b, 0, config.n_mels), jnp.float32)
    frames = frame_audio(audio, config.hop, config.n_fft, config.pad_mode)
    spec = jnp.fft.rfft(frames * jnp.asarray(hann_window(config.n_fft)), axis=-1)
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    fb = jnp.asarray(mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin,
                                    config.fmax))
    mel = jnp.einsum("btf,fm->btm", power, fb, precision=jax.lax.Precision.HIGHEST)
    return jnp.log(jnp.maximum(mel, config.log_floor))


# ----------------------------------------------------------------------------------- Wav2Vec2

_NORMS = ("group", "layer")


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """Architecture of a Hugging Face `Wav2Vec2Model` (field names follow its config.json).

    `base()` is facebook/wav2vec2-base (group norm in the first conv, post-LN transformer);
    `large()` is facebook/wav2vec2-large-lv60 (layer norm in every conv, pre-LN "stable"
    transformer with a final LayerNorm, conv biases).
    """

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    do_stable_layer_norm: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5
    # The SpecAugment mask vector (training only; kept so checkpoints map one-to-one and the
    # parameter count matches the published one). Hugging Face creates it when
    # mask_time_prob > 0 or mask_feature_prob > 0.
    masked_spec_embed: bool = True

    @classmethod
    def base(cls, **overrides) -> "Wav2Vec2Config":
        return dataclasses.replace(cls(), **overrides).validate()

    @classmethod
    def large(cls, **overrides) -> "Wav2Vec2Config":
        cfg = cls(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, conv_bias=True, feat_extract_norm="layer",
                  do_stable_layer_norm=True)
        return dataclasses.replace(cfg, **overrides).validate()

    @property
    def frame_stride(self) -> int:
        """Samples between consecutive output frames (320 for the published models)."""
        return int(np.prod(self.conv_stride))

    @property
    def receptive_field(self) -> int:
        """Samples seen by one output frame (400 for the published models)."""
        r = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            r = (r - 1) * s + k
        return r

    def num_frames(self, num_samples: int) -> int:
        """Output frames for `num_samples` input samples (0 when shorter than the receptive field)."""
        n = int(num_samples)
        for k, s in zip(self.conv_kernel, self.conv_stride):
            if n < k:
                return 0
            n = (n - k) // s + 1
        return n

    def validate(self) -> "Wav2Vec2Config":
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride) >= 1):
            raise ConfigError(f"wav2vec2: conv_dim {self.conv_dim}, conv_kernel {self.conv_kernel} "
                              f"and conv_stride {self.conv_stride} must have the same length")
        if self.feat_extract_norm not in _NORMS:
            raise ConfigError(f"wav2vec2: feat_extract_norm is {self.feat_extract_norm!r}, expected "
                              f"one of {list(_NORMS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"wav2vec2: hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ConfigError(f"wav2vec2: hidden_size {self.hidden_size} is not divisible by "
                              f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}")
        return self

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], source: str = "config.json") -> "Wav2Vec2Config":
        """From a Hugging Face Wav2Vec2 config.json dict; rejects features this port lacks."""
        model_type = hf.get("model_type", "wav2vec2")
        if model_type != "wav2vec2":
            raise ConfigError(f"{source}: model_type is {model_type!r}; only 'wav2vec2' checkpoints "
                              "are supported (not HuBERT/WavLM/conformer variants)")
        for key in ("hidden_act", "feat_extract_activation"):
            if hf.get(key, "gelu") != "gelu":
                raise ConfigError(f"{source}: {key} is {hf[key]!r}; only 'gelu' is supported")
        if hf.get("add_adapter") or hf.get("adapter_attn_dim") is not None:
            raise ConfigError(f"{source}: adapter layers (add_adapter/adapter_attn_dim) are not "
                              "supported; use a checkpoint without adapters")
        if hf.get("position_embeddings_type", "conv") not in (None, "conv"):
            raise ConfigError(f"{source}: position_embeddings_type "
                              f"{hf['position_embeddings_type']!r} is not supported (only 'conv')")
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name in hf and f.name != "masked_spec_embed":
                value = hf[f.name]
                kw[f.name] = tuple(int(v) for v in value) if isinstance(value, list) else value
        kw["masked_spec_embed"] = (float(hf.get("mask_time_prob", 0.05)) > 0
                                   or float(hf.get("mask_feature_prob", 0.0)) > 0)
        n_layers = hf.get("num_feat_extract_layers")
        if n_layers is not None and n_layers != len(kw.get("conv_dim", cls.conv_dim)):
            raise ConfigError(f"{source}: num_feat_extract_layers {n_layers} does not match "
                              f"conv_dim of length {len(kw.get('conv_dim', cls.conv_dim))}")
        try:
            return cls(**kw).validate()
        except TypeError as e:  # pragma: no cover - malformed values
            raise ConfigError(f"{source}: malformed Wav2Vec2 config ({e})") from None


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)  # the exact (erf) GELU of the published models


def _layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


class _FeatureConv(nnx.Module):
    """Conv1d (VALID) -> optional norm -> GELU on [B, N, C]."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, bias: bool, norm: str | None,
                 *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (kernel,), strides=(stride,), padding="VALID",
                             use_bias=bias, rngs=rngs)
        if norm == "group":    # one group per channel: each channel normalised over time
            self.norm = nnx.GroupNorm(cout, num_groups=cout, epsilon=1e-5, use_fast_variance=False,
                                      rngs=rngs)
        elif norm == "layer":  # over channels, per time step
            self.norm = _layer_norm(cout, 1e-5, rngs)
        else:
            self.norm = None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return _gelu(x)


class FeatureEncoder(nnx.Module):
    """The 7-layer strided conv stack: audio [B, N] -> [B, T50, conv_dim[-1]]."""

    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
        layers, cin = [], 1
        for i, (cout, k, s) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride)):
            norm = "layer" if cfg.feat_extract_norm == "layer" else ("group" if i == 0 else None)
            layers.append(_FeatureConv(cin, cout, k, s, cfg.conv_bias, norm, rngs=rngs))
            cin = cout
        self.conv_layers = nnx.List(layers)

    def __call__(self, audio: jax.Array) -> jax.Array:
        x = audio[..., None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nnx.Module):
    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
        self.layer_norm = _layer_norm(cfg.conv_dim[-1], cfg.layer_norm_eps, rngs)
        self.projection = nnx.Linear(cfg.conv_dim[-1], cfg.hidden_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.projection(self.layer_norm(x))


class PositionalConvEmbedding(nnx.Module):
    """Grouped conv over time (kernel K, padding K//2, trimmed back to T frames), then GELU.

    The published models use weight norm on this conv; the loader folds it into a plain kernel.
    """

    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
        k = cfg.num_conv_pos_embeddings
        self.conv = nnx.Conv(cfg.hidden_size, cfg.hidden_size, (k,), padding=((k // 2, k // 2),),
                             feature_group_count=cfg.num_conv_pos_embedding_groups, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        t = x.shape[1]
        return _gelu(self.conv(x)[:, :t])   # even K gives T+1 frames: drop the last


class SelfAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.q_proj = nnx.Linear(dim, dim, rngs=rngs)
        self.k_proj = nnx.Linear(dim, dim, rngs=rngs)
        self.v_proj = nnx.Linear(dim, dim, rngs=rngs)
        self.out_proj = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.heads, d // self.heads)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        o = jax.nn.dot_product_attention(q, k, v)   # scale 1/sqrt(head_dim), no mask
        return self.out_proj(o.reshape(b, t, d))


class FeedForward(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
        self.intermediate_dense = nnx.Linear(dim, hidden, rngs=rngs)
        self.output_dense = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.output_dense(_gelu(self.intermediate_dense(x)))


class EncoderLayer(nnx.Module):
    """Post-LN (`stable=False`): x = LN(x + attn(x)); x = LN'(x + ff(x)).
    Pre-LN (`stable=True`): x = x + attn(LN(x)); x = x + ff(LN'(x))."""

    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
        self.stable = cfg.do_stable_layer_norm
        self.attention = SelfAttention(cfg.hidden_size, cfg.num_attention_heads, rngs=rngs)
        self.layer_norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.intermediate_size, rngs=rngs)
        self.final_layer_norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stable:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class Encoder(nnx.Module):
    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
        self.stable = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(cfg, rngs=rngs)
        self.layer_norm = _layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        x = x + self.pos_conv_embed(x)
        if not self.stable:
            x = self.layer_norm(x)
        hidden = [x]
        for layer in self.layers:
            x = layer(x)
            hidden.append(x)
        if self.stable:
            x = self.layer_norm(x)
        return x, hidden


class Wav2Vec2(nnx.Module):
    """Hugging Face `Wav2Vec2Model` in NNX, inference only (no dropout, masking or padding mask).

    `model(audio)`: raw 16 kHz audio [B, N] (normalise it first if the checkpoint expects it,
    see `Wav2Vec2Features`) -> last hidden state [B, T50, hidden_size], T50 = cfg.num_frames(N).
    With `output_hidden_states=True` returns `(last, hidden_states)`, where `hidden_states` has
    `num_hidden_layers + 1` entries as in transformers 5: the encoder input (after the positional
    conv, and its LayerNorm in the post-LN variant) and each layer's output (in the stable
    variant the last entry is before the final LayerNorm, `last` after it).
    """

    def __init__(self, cfg: Wav2Vec2Config, *, rngs: nnx.Rngs):
        cfg.validate()
        self.config = cfg
        self.feature_extractor = FeatureEncoder(cfg, rngs=rngs)
        self.feature_projection = FeatureProjection(cfg, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        self.masked_spec_embed = (nnx.Param(jnp.zeros((cfg.hidden_size,), jnp.float32))
                                  if cfg.masked_spec_embed else None)

    def __call__(self, audio: jax.Array, output_hidden_states: bool = False):
        _check_audio(audio, "Wav2Vec2")
        if self.config.num_frames(audio.shape[1]) < 1:
            raise ValueError(f"Wav2Vec2 needs at least {self.config.receptive_field} samples, got "
                             f"{audio.shape[1]}")
        h = self.feature_projection(self.feature_extractor(jnp.asarray(audio, jnp.float32)))
        last, hidden = self.encoder(h)
        return (last, tuple(hidden)) if output_hidden_states else last


def count_params(model: nnx.Module) -> int:
    """Number of parameters (works on abstract models from `nnx.eval_shape`)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


# ----------------------------------------------------------------------- checkpoint conversion

# Tensor layouts: "conv" torch [O, I/groups, K] -> flax [K, I/groups, O]; "linear" torch [O, I]
# -> flax [I, O]; "vector" unchanged.
_POS_CONV = "encoder.pos_conv_embed.conv."
# Heads of task models (Wav2Vec2ForCTC, ...ForPreTraining, ...ForSequenceClassification, ...):
# present next to the `wav2vec2.` backbone, not part of Wav2Vec2Model, skipped.
_HEAD_PREFIXES = ("lm_head.", "quantizer.", "project_q.", "project_hid.", "projector.",
                  "classifier.", "tdnn.", "feature_extractor_xvector.", "objective.")


def wav2vec2_key_map(cfg: Wav2Vec2Config) -> dict[str, tuple[tuple[Any, ...], str]]:
    """Hugging Face state-dict key -> (attribute path in `Wav2Vec2`, layout), for every weight."""
    out: dict[str, tuple[tuple[Any, ...], str]] = {}

    def norm(hf: str, path: tuple[Any, ...]) -> None:
        out[hf + ".weight"] = (path + ("scale",), "vector")
        out[hf + ".bias"] = (path + ("bias",), "vector")

    def dense(hf: str, path: tuple[Any, ...], layout: str = "linear", bias: bool = True) -> None:
        out[hf + ".weight"] = (path + ("kernel",), layout)
        if bias:
            out[hf + ".bias"] = (path + ("bias",), "vector")

    for i in range(len(cfg.conv_dim)):
        hf, path = f"feature_extractor.conv_layers.{i}", ("feature_extractor", "conv_layers", i)
        dense(hf + ".conv", path + ("conv",), "conv", bias=cfg.conv_bias)
        if cfg.feat_extract_norm == "layer" or i == 0:
            norm(hf + ".layer_norm", path + ("norm",))
    norm("feature_projection.layer_norm", ("feature_projection", "layer_norm"))
    dense("feature_projection.projection", ("feature_projection", "projection"))
    dense("encoder.pos_conv_embed.conv", ("encoder", "pos_conv_embed", "conv"), "conv")
    norm("encoder.layer_norm", ("encoder", "layer_norm"))
    for i in range(cfg.num_hidden_layers):
        hf, path = f"encoder.layers.{i}", ("encoder", "layers", i)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            dense(f"{hf}.attention.{proj}", path + ("attention", proj))
        dense(f"{hf}.feed_forward.intermediate_dense", path + ("feed_forward", "intermediate_dense"))
        dense(f"{hf}.feed_forward.output_dense", path + ("feed_forward", "output_dense"))
        norm(f"{hf}.layer_norm", path + ("layer_norm",))
        norm(f"{hf}.final_layer_norm", path + ("final_layer_norm",))
    if cfg.masked_spec_embed:
        out["masked_spec_embed"] = (("masked_spec_embed",), "vector")
    return out


def _to_flax(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return value.transpose(2, 1, 0)
    if layout == "linear":
        return value.T
    return value


def _expected_hf_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    return tuple(reversed(flax_shape)) if layout in ("conv", "linear") else tuple(flax_shape)


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """torch weight_norm(dim=2) on a Conv1d weight [O, I, K]: w = g * v / ||v||, the norm taken
    over (O, I) separately for each kernel tap; g has shape [1, 1, K]."""
    v = np.asarray(v, np.float64)
    norm = np.sqrt(np.sum(v * v, axis=(0, 1), keepdims=True))
    return (np.asarray(g, np.float64) * v / norm).astype(np.float32)


def _short_list(keys: Sequence[str], limit: int = 6) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _normalise_keys(tensors: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Backbone keys of a Wav2Vec2Model: strips `wav2vec2.` (task models), drops their heads,
    folds the positional conv's weight norm (old `weight_g/weight_v` or new
    `parametrizations.weight.original0/original1` names)."""
    if any(k.startswith("wav2vec2.") for k in tensors):
        tensors = {k[len("wav2vec2."):]: v for k, v in tensors.items()
                   if k.startswith("wav2vec2.") or not k.startswith(_HEAD_PREFIXES)}
    else:
        tensors = dict(tensors)
    pairs = (("weight_g", "weight_v"),
             ("parametrizations.weight.original0", "parametrizations.weight.original1"))
    for g_name, v_name in pairs:
        g_key, v_key = _POS_CONV + g_name, _POS_CONV + v_name
        if g_key in tensors or v_key in tensors:
            if g_key not in tensors or v_key not in tensors:
                missing = g_key if g_key not in tensors else v_key
                raise ConfigError(f"{source}: missing key {missing} (weight-norm pair of the "
                                  "positional conv); the checkpoint is incomplete")
            if _POS_CONV + "weight" in tensors:
                raise ConfigError(f"{source}: both {_POS_CONV}weight and {g_key} are present; "
                                  "the checkpoint is ambiguous")
            tensors[_POS_CONV + "weight"] = fold_weight_norm(tensors.pop(g_key), tensors.pop(v_key))
    return tensors


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ConfigError(f"reading {path} needs the `safetensors` package: pip install "
                          "safetensors") from None
    return dict(load_file(path))


def _read_torch_bin(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConfigError(f"reading {path} needs PyTorch (pip install torch), or convert it once "
                          "to model.safetensors where torch is installed") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()
            if hasattr(v, "detach")}


def _read_sharded(index_path: str, reader: Callable[[str], dict]) -> dict[str, np.ndarray]:
    with open(index_path, encoding="utf-8") as f:
        weight_map = json.load(f).get("weight_map", {})
    folder = os.path.dirname(index_path)
    out: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        out.update(reader(os.path.join(folder, shard)))
    return out


def _reader_for(path: str) -> Callable[[str], dict[str, np.ndarray]]:
    name = os.path.basename(path).removesuffix(".index.json")
    if name.endswith(".safetensors"):
        return _read_safetensors
    if name.endswith((".bin", ".pt", ".pth")):
        return _read_torch_bin
    raise ConfigError(f"unsupported Wav2Vec2 weight file {path} (use model.safetensors or "
                      "pytorch_model.bin)")


_WEIGHT_FILES = (("model.safetensors", _read_safetensors, False),
                 ("model.safetensors.index.json", _read_safetensors, True),
                 ("pytorch_model.bin", _read_torch_bin, False),
                 ("pytorch_model.bin.index.json", _read_torch_bin, True))


def read_wav2vec2_checkpoint(path: str) -> tuple[Wav2Vec2Config, dict[str, np.ndarray], dict]:
    """(config, raw tensors, preprocessor config or {}) from a Hugging Face checkpoint directory
    (or the path of its weight file). Reads only local files."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.exists(path):
        raise ConfigError(f"Wav2Vec2 checkpoint not found: {path} (pass a local Hugging Face "
                          "directory with config.json and model.safetensors or pytorch_model.bin)")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{folder}: no config.json; pass the Hugging Face checkpoint directory "
                          "(config.json + model.safetensors or pytorch_model.bin)")
    try:
        with open(config_path, encoding="utf-8") as f:
            hf_config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"could not read {config_path}: {' '.join(str(e).split())}") from None
    cfg = Wav2Vec2Config.from_hf(hf_config, source=config_path)
    pre_path = os.path.join(folder, "preprocessor_config.json")
    preprocessor = {}
    if os.path.isfile(pre_path):
        with open(pre_path, encoding="utf-8") as f:
            preprocessor = json.load(f)
    if os.path.isfile(path) and os.path.basename(path) != "config.json":
        file, reader, sharded = path, _reader_for(path), path.endswith(".index.json")
    else:
        found = [(os.path.join(folder, f), r, s) for f, r, s in _WEIGHT_FILES
                 if os.path.isfile(os.path.join(folder, f))]
        file, reader, sharded = found[0] if found else (None, None, False)
    if file is not None:
        try:
            return cfg, (_read_sharded(file, reader) if sharded else reader(file)), preprocessor
        except ConfigError:
            raise
        except Exception as e:  # corrupt/truncated files: one line, not a library traceback
            detail = " ".join(str(e).split())[:200]
            raise ConfigError(f"could not read Wav2Vec2 weights {file}: {type(e).__name__}: "
                              f"{detail} (re-save or re-download the checkpoint)") from None
    raise ConfigError(f"{folder}: no weights found (looked for "
                      f"{', '.join(f for f, _, _ in _WEIGHT_FILES)})")


def _get_variable(model: nnx.Module, path: tuple[Any, ...]) -> nnx.Variable:
    obj: Any = model
    for p in path:
        obj = obj[p] if isinstance(p, int) else getattr(obj, p)
    return obj


def wav2vec2_from_tensors(cfg: Wav2Vec2Config, tensors: Mapping[str, np.ndarray],
                          source: str = "checkpoint") -> Wav2Vec2:
    """Builds a `Wav2Vec2` holding the given Hugging Face state-dict tensors (no random init).

    Raises ConfigError (one line) naming missing, unexpected or mis-shaped keys.
    """
    tensors = _normalise_keys({k: np.asarray(v) for k, v in tensors.items()}, source)
    key_map = wav2vec2_key_map(cfg)
    optional = {"masked_spec_embed"}   # training-only; absent when mask probabilities are 0
    missing = [k for k in key_map if k not in tensors and k not in optional]
    unexpected = [k for k in tensors if k not in key_map and k not in optional]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_short_list(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_short_list(unexpected)}")
        raise ConfigError(f"{source}: weights do not match config.json ({'; '.join(parts)}); "
                          "check that the weights and config.json come from the same Wav2Vec2 model")
    model = nnx.eval_shape(lambda: Wav2Vec2(cfg, rngs=nnx.Rngs(0)))
    wrong = []
    for key, (path, layout) in key_map.items():
        var = _get_variable(model, path)
        value = tensors.get(key)
        if value is None:   # optional masked_spec_embed
            var.set_value(jnp.zeros(var.shape, jnp.float32))
            continue
        want = _expected_hf_shape(tuple(var.shape), layout)
        if tuple(value.shape) != want:
            wrong.append(f"{key} {tuple(value.shape)} != {want}")
            continue
        var.set_value(jnp.asarray(_to_flax(value.astype(np.float32, copy=False), layout)))
    if wrong:
        raise ConfigError(f"{source}: {len(wrong)} weights have the wrong shape for config.json: "
                          f"{_short_list(wrong, 4)}")
    if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(nnx.state(model))):
        raise AssertionError("wav2vec2_key_map does not cover every variable of Wav2Vec2")
    return model


def load_wav2vec2(path: str) -> Wav2Vec2:
    """A `Wav2Vec2` from a local Hugging Face checkpoint directory (config.json + model.safetensors,
    a sharded index, or pytorch_model.bin, which needs torch). Task checkpoints
    (Wav2Vec2ForCTC, ...ForPreTraining) load their `wav2vec2.` backbone. Never downloads."""
    cfg, tensors, _ = read_wav2vec2_checkpoint(path)
    return wav2vec2_from_tensors(cfg, tensors, source=os.fspath(path))


# ------------------------------------------------------------------ 25 fps feature front ends

class LogMelFeatures:
    """audio [B, N] -> log-mel [B, N // 640, n_mels] at 25 fps. Parameter-free (`params` is {})."""

    kind = "logmel"

    def __init__(self, config: LogMelConfig = LogMelConfig()):
        self.config = config.validate()
        self.params: dict = {}
        self._jitted = jax.jit(self.apply)

    @property
    def feature_dim(self) -> int:
        return self.config.n_mels

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def fps(self) -> int:
        return self.config.fps

    def num_frames(self, num_samples: int) -> int:
        return num_video_frames(num_samples, self.config.hop)

    def apply(self, params, audio: jax.Array) -> jax.Array:
        del params
        return log_mel(audio, self.config)

    def __call__(self, audio: jax.Array) -> jax.Array:
        _check_audio(audio, "LogMelFeatures")
        return self._jitted(self.params, audio)


def normalize_audio(audio: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Zero mean, unit variance per row (what Wav2Vec2FeatureExtractor's do_normalize does)."""
    mean = jnp.mean(audio, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(audio - mean), axis=-1, keepdims=True)
    return (audio - mean) / jnp.sqrt(var + eps)


class Wav2Vec2Features:
    """audio [B, N] at 16 kHz -> Wav2Vec2 features [B, N // 640, hidden_size] at 25 fps.

    Steps: keep the first 640 T samples, normalise them (if `normalize`), zero-pad 40 samples at
    each end, run Wav2Vec2 (exactly 2 T frames at 50 Hz), average frame pairs (2t, 2t+1), whose
    centres straddle video frame t's centre symmetrically. `layer` picks a hidden state instead of
    the last one (index into `hidden_states`, see `Wav2Vec2`). `params` is the NNX state; `apply`
    is pure, for use inside a jitted step.
    """

    kind = "wav2vec2"
    sample_rate = SAMPLE_RATE
    fps = FPS

    def __init__(self, model: Wav2Vec2, normalize: bool = True, layer: int | None = None):
        cfg = model.config
        ratio, rem = divmod(SAMPLES_PER_FRAME, cfg.frame_stride)
        if rem or (cfg.receptive_field - cfg.frame_stride) % 2 or cfg.receptive_field < cfg.frame_stride:
            raise ConfigError(f"wav2vec2: frame stride {cfg.frame_stride} / receptive field "
                              f"{cfg.receptive_field} cannot be aligned to {SAMPLES_PER_FRAME}-sample "
                              "video frames (the published models have 320 / 400)")
        n_states = cfg.num_hidden_layers + 1
        if layer is not None and not -n_states <= layer < n_states:
            raise ConfigError(f"wav2vec2: layer {layer} out of range for {n_states} hidden states")
        self.config = cfg
        self.normalize = bool(normalize)
        self.layer = layer
        self.ratio = ratio                                   # 50 Hz frames per video frame (2)
        self.pad = (cfg.receptive_field - cfg.frame_stride) // 2   # 40 samples
        self.graphdef, self.params = nnx.split(model)
        self._jitted = jax.jit(self.apply)

    @property
    def feature_dim(self) -> int:
        return self.config.hidden_size

    def num_frames(self, num_samples: int) -> int:
        return num_video_frames(num_samples)

    def apply(self, params, audio: jax.Array) -> jax.Array:
        _check_audio(audio, "Wav2Vec2Features")
        b, n = audio.shape
        t = n // SAMPLES_PER_FRAME
        if t == 0:
            return jnp.zeros((b, 0, self.feature_dim), jnp.float32)
        x = jnp.asarray(audio, jnp.float32)[:, :t * SAMPLES_PER_FRAME]
        if self.normalize:
            x = normalize_audio(x)
        x = jnp.pad(x, ((0, 0), (self.pad, self.pad)))
        model = nnx.merge(self.graphdef, params)
        if self.layer is None:
            h = model(x)
        else:
            h = model(x, output_hidden_states=True)[1][self.layer]
        return h.reshape(b, t, self.ratio, h.shape[-1]).mean(axis=2)

    def __call__(self, audio: jax.Array) -> jax.Array:
        _check_audio(audio, "Wav2Vec2Features")
        return self._jitted(self.params, audio)


AUDIO_FEATURE_KINDS = ("logmel", "wav2vec2")


def make_audio_features(kind: str = "logmel", *, wav2vec2_path: str | None = None,
                        wav2vec2_model: Wav2Vec2 | None = None, normalize: bool | None = None,
                        layer: int | None = None, **logmel_kwargs):
    """The audio front end named by `kind`: an object mapping audio [B, N] (16 kHz) to
    [B, N // 640, feature_dim] at 25 fps, with `feature_dim`, `params`, `apply(params, audio)`.

    kind="logmel": `logmel_kwargs` are `LogMelConfig` fields (n_mels, n_fft, fmin, fmax, ...).
    kind="wav2vec2": `wav2vec2_path` (a local Hugging Face checkpoint directory) or an already
    built `wav2vec2_model`; `normalize` defaults to the checkpoint's preprocessor_config.json
    `do_normalize` (True when absent, as for the published models); `layer` as in Wav2Vec2Features.
    """
    if kind == "logmel":
        if wav2vec2_path is not None or wav2vec2_model is not None:
            raise ConfigError("audio features: wav2vec2_path/wav2vec2_model given with kind='logmel'; "
                              "set kind='wav2vec2' or drop them")
        names = {f.name for f in dataclasses.fields(LogMelConfig)}
        bad = sorted(set(logmel_kwargs) - names)
        if bad:
            raise ConfigError(f"audio features: unknown log-mel options {bad}; allowed: {sorted(names)}")
        return LogMelFeatures(LogMelConfig(**logmel_kwargs))
    if kind == "wav2vec2":
        if logmel_kwargs:
            raise ConfigError(f"audio features: log-mel options {sorted(logmel_kwargs)} given with "
                              "kind='wav2vec2'; drop them or set kind='logmel'")
        if (wav2vec2_path is None) == (wav2vec2_model is None):
            raise ConfigError("audio features: kind='wav2vec2' needs exactly one of wav2vec2_path "
                              "(a local Hugging Face checkpoint directory: config.json + "
                              "model.safetensors) or wav2vec2_model")
        if wav2vec2_model is None:
            cfg, tensors, pre = read_wav2vec2_checkpoint(wav2vec2_path)
            wav2vec2_model = wav2vec2_from_tensors(cfg, tensors, source=os.fspath(wav2vec2_path))
            if normalize is None:
                normalize = bool(pre.get("do_normalize", True))
        return Wav2Vec2Features(wav2vec2_model, normalize=True if normalize is None else normalize,
                                layer=layer)
    raise ConfigError(f"audio features: kind is {kind!r}, expected one of {list(AUDIO_FEATURE_KINDS)}")


__all__ = [
    "AUDIO_FEATURE_KINDS", "FPS", "SAMPLE_RATE", "SAMPLES_PER_FRAME",
    "LogMelConfig", "LogMelFeatures", "Wav2Vec2", "Wav2Vec2Config", "Wav2Vec2Features",
    "count_params", "fold_weight_norm", "frame_audio", "hann_window", "hz_to_mel", "load_wav2vec2",
    "log_mel", "make_audio_features", "mel_filterbank", "mel_to_hz", "normalize_audio",
    "num_video_frames", "read_wav2vec2_checkpoint", "wav2vec2_from_tensors", "wav2vec2_key_map",
]
