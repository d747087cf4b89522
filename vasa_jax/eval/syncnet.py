"""SyncNet (Chung & Zisserman 2016; the `syncnet_python` release) in Flax NNX: MFCC front end,
audio and lip branches, the original `syncnet_v2` weight loader, the ±15-frame offset search
that gives Sc / Sd, and a trainer on SynthTalk so the metric can be checked here.

    net = load_syncnet("syncnet_v2.model")            # the file a user already has (torch)
    r = sync_scores(net, frames, audio)               # uint8 [T, 224, 224, 3], 16 kHz [N]
    r["offset"], r["confidence"] (Sc), r["min_dist"] (Sd)

Reference layout (`SyncNetModel.S`, torch key names in brackets; BatchNorm eps 1e-5):

    audio  MFCC [B, 1, 13, 20] (13 cepstra x 20 steps = 0.2 s, channels-last here [B, 13, 20, 1])
           conv3x3 64 [netcnnaud.0] BN [.1] ReLU, maxpool 1x1
           conv3x3 192 [.4] BN [.5] ReLU, maxpool 3x3 stride (1, 2)
           conv3x3 384 [.8] BN [.9] ReLU, conv3x3 256 [.11] BN [.12] ReLU,
           conv3x3 256 [.14] BN [.15] ReLU, maxpool 3x3 stride 2
           conv 5x4 512 (valid) [.18] BN [.19] ReLU                   -> [B, 512]
           fc 512 [netfcaud.0] BN1d [.1] ReLU fc 1024 [.3]            -> [B, 1024]
    lips   5 frames [B, 3, 5, 224, 224] (channels-last here [B, 5, 224, 224, 3], BGR, 0..255)
           conv3d (5,7,7)/(1,2,2) 96 [netcnnlip.0] BN [.1] ReLU, maxpool (1,3,3)/(1,2,2)
           conv3d (1,5,5)/(1,2,2) pad (0,1,1) 256 [.4] BN [.5] ReLU, maxpool (1,3,3)/(1,2,2) pad 1
           conv3d (1,3,3) pad 1 256 [.8], [.11], [.14] each BN ReLU, maxpool (1,3,3)/(1,2,2)
           conv3d (1,6,6) 512 [.18] BN [.19] ReLU                      -> [B, 512]
           fc 512 [netfclip.0] BN1d [.1] ReLU fc 1024 [.3]             -> [B, 1024]

`SyncNetConfig(width=..., image_size=...)` scales every hidden width and fits the last lip conv
to smaller crops (64² SynthTalk faces: width 0.25, embedding 128); width 1 at 224² is the
reference network.

Scoring is the reference's `SyncNetInstance.evaluate`: the MFCCs of the whole track
(python_speech_features defaults on int16-scaled samples), lip windows starting at every frame
t < T − 5 with the MFCC steps [4t, 4t + 20), the Euclidean distances (torch `pairwise_distance`,
eps 1e-6) of every lip window to the audio windows shifted by −15…+15 frames (zero features
past the ends), averaged over t: `offset = vshift − argmin`, `Sd = min`, `Sc = median − min`.
With this convention the offset is −d when the audio lags the video by d frames.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax.errors import ConfigError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
FPS = 25
MFCC_PER_FRAME = 4          # 100 Hz MFCC steps per 25 fps video frame
AUDIO_STEPS = 20            # MFCC steps per window (0.2 s)
LIP_FRAMES = 5              # video frames per window
NUM_CEPS = 13
VSHIFT = 15                 # offset search range (frames), as run_syncnet.py --vshift 15
BN_EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# MFCC, as python_speech_features.mfcc with its defaults (winlen 25 ms, step 10 ms, 13 cepstra,
# 26 mel filters, nfft 512, pre-emphasis 0.97, lifter 22, c0 replaced by the log frame energy).


def _mel_filterbank(nfilt: int = 26, nfft: int = 512, sample_rate: int = SAMPLE_RATE
                    ) -> np.ndarray:
    def hz2mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel2hz(mel):
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    mel = np.linspace(hz2mel(0.0), hz2mel(sample_rate / 2.0), nfilt + 2)
    bins = np.floor((nfft + 1) * mel2hz(mel) / sample_rate)
    fb = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(lo, mid):
            fb[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(mid, hi):
            fb[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return fb


_FB = _mel_filterbank()
_DCT = None


def _dct_matrix(n: int = 26) -> np.ndarray:
    """Orthonormal DCT-II matrix [n, n] (scipy.fftpack.dct(type=2, norm='ortho'))."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None]
    m = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def mfcc(audio: np.ndarray) -> np.ndarray:
    """16 kHz float samples [N] in [-1, 1] → MFCC [13, M] at 100 Hz (M = 1 + ceil((N − 400) / 160)).

    The samples are scaled to int16 range first (the reference reads 16-bit wav files)."""
    global _DCT
    sig = np.asarray(audio, np.float64).reshape(-1) * 32768.0
    if sig.size == 0:
        raise ConfigError("mfcc: the audio is empty: give at least 400 samples (25 ms) at 16 kHz")
    sig = np.append(sig[0], sig[1:] - 0.97 * sig[:-1])
    flen, step = 400, 160
    n = 1 if sig.size <= flen else 1 + int(math.ceil((sig.size - flen) / step))
    pad = np.concatenate([sig, np.zeros((n - 1) * step + flen - sig.size)])
    idx = np.arange(flen)[None] + step * np.arange(n)[:, None]
    frames = pad[idx]
    pspec = np.abs(np.fft.rfft(frames, 512)) ** 2 / 512.0
    energy = pspec.sum(1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = pspec @ _FB.T
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    if _DCT is None:
        _DCT = _dct_matrix(26)
    cep = (np.log(feat) @ _DCT.T)[:, :NUM_CEPS]
    cep *= 1.0 + 11.0 * np.sin(np.pi * np.arange(NUM_CEPS) / 22.0)
    cep[:, 0] = np.log(energy)
    return cep.T.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The network.


@dataclasses.dataclass(frozen=True)
class SyncNetConfig:
    """width scales every hidden channel count (1.0: the reference); image_size is the lip crop
    side (224: the reference); embed_dim the output size (1024: the reference)."""

    width: float = 1.0
    image_size: int = 224
    embed_dim: int = 1024
    # "full": the whole face crop (the reference); "lower": rows 3/8..1, columns 3/16..13/16 of
    # it, resized to image_size (small SynthTalk faces: the mouth gets more pixels).
    crop: str = "full"

    def ch(self, c: int) -> int:
        return max(4, int(round(c * self.width)))

    def lip_final_size(self) -> int:
        s = (self.image_size - 7) // 2 + 1          # conv (5,7,7)/2
        s = (s - 3) // 2 + 1                        # maxpool 3/2
        s = (s + 2 - 5) // 2 + 1                    # conv (1,5,5)/2 pad 1
        s = (s + 2 - 3) // 2 + 1                    # maxpool 3/2 pad 1
        s = (s - 3) // 2 + 1                        # maxpool 3/2
        return s

    def validate(self) -> "SyncNetConfig":
        if not (self.width > 0 and self.embed_dim > 0):
            raise ConfigError(f"SyncNetConfig width={self.width}, embed_dim={self.embed_dim}: "
                              "both must be positive")
        if self.crop not in ("full", "lower"):
            raise ConfigError(f"SyncNetConfig crop={self.crop!r}: use 'full' or 'lower'")
        if self.image_size < 51 or self.lip_final_size() < 1:
            raise ConfigError(f"SyncNetConfig image_size={self.image_size}: lip crops must be at "
                              "least 51 pixels (224 for the reference weights)")
        return self


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, epsilon=BN_EPS, momentum=0.9, use_running_average=True, rngs=rngs)


def _mp(x, window, strides, padding=None):
    pad = padding or tuple((0, 0) for _ in window)
    return nnx.max_pool(x, window, strides, pad)


class SyncNet(nnx.Module):
    """`audio(mfcc [B, 13, 20]) -> [B, D]`, `lips(frames [B, 5, S, S, 3] BGR 0..255) -> [B, D]`.

    Keeps the reference's Sequential indices as attribute names (`aud0`, `aud1`, ...)."""

    AUD = ((0, 64), (4, 192), (8, 384), (11, 256), (14, 256), (18, 512))
    LIP = ((0, 96), (4, 256), (8, 256), (11, 256), (14, 256), (18, 512))

    def __init__(self, config: SyncNetConfig = SyncNetConfig(), *, rngs: nnx.Rngs):
        self.config = config = config.validate()
        ch = config.ch
        cin = 1
        aud_k = {0: (3, 3), 4: (3, 3), 8: (3, 3), 11: (3, 3), 14: (3, 3), 18: (5, 4)}
        for i, c in self.AUD:
            pad = ((0, 0), (0, 0)) if i == 18 else ((1, 1), (1, 1))
            setattr(self, f"aud{i}", nnx.Conv(cin, ch(c), aud_k[i], padding=pad, rngs=rngs))
            setattr(self, f"aud{i + 1}", _bn(ch(c), rngs))
            cin = ch(c)
        f = config.lip_final_size()
        lip = {0: ((5, 7, 7), (1, 2, 2), ((0, 0),) * 3),
               4: ((1, 5, 5), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),
               8: ((1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1))),
               11: ((1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1))),
               14: ((1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1))),
               18: ((1, f, f), (1, 1, 1), ((0, 0),) * 3)}
        cin = 3
        for i, c in self.LIP:
            k, s, p = lip[i]
            setattr(self, f"lip{i}", nnx.Conv(cin, ch(c), k, strides=s, padding=p, rngs=rngs))
            setattr(self, f"lip{i + 1}", _bn(ch(c), rngs))
            cin = ch(c)
        for name in ("fcaud", "fclip"):
            setattr(self, f"{name}0", nnx.Linear(ch(512), ch(512), rngs=rngs))
            setattr(self, f"{name}1", _bn(ch(512), rngs))
            setattr(self, f"{name}3", nnx.Linear(ch(512), config.embed_dim, rngs=rngs))

    def _block(self, prefix: str, i: int, x):
        return jax.nn.relu(getattr(self, f"{prefix}{i + 1}")(getattr(self, f"{prefix}{i}")(x)))

    def _fc(self, prefix: str, x):
        x = jax.nn.relu(getattr(self, f"{prefix}1")(getattr(self, f"{prefix}0")(x)))
        return getattr(self, f"{prefix}3")(x)

    def audio(self, mfcc_windows: jax.Array) -> jax.Array:
        """mfcc_windows [B, 13, 20] → [B, embed_dim]."""
        x = mfcc_windows[..., None].astype(jnp.float32)
        x = self._block("aud", 0, x)
        x = self._block("aud", 4, x)
        x = _mp(x, (3, 3), (1, 2))
        x = self._block("aud", 8, x)
        x = self._block("aud", 11, x)
        x = self._block("aud", 14, x)
        x = _mp(x, (3, 3), (2, 2))
        x = self._block("aud", 18, x)
        return self._fc("fcaud", x.reshape(x.shape[0], -1))

    def lips(self, frames: jax.Array) -> jax.Array:
        """frames [B, 5, S, S, 3] (BGR, 0..255 floats, as the reference reads them) → [B, D]."""
        x = frames.astype(jnp.float32)
        x = self._block("lip", 0, x)
        x = _mp(x, (1, 3, 3), (1, 2, 2))
        x = self._block("lip", 4, x)
        x = _mp(x, (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1)))
        x = self._block("lip", 8, x)
        x = self._block("lip", 11, x)
        x = self._block("lip", 14, x)
        x = _mp(x, (1, 3, 3), (1, 2, 2))
        x = self._block("lip", 18, x)
        return self._fc("fclip", x.reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------------------------
# The reference weight file.


def torch_entries(net: SyncNet) -> Iterator[tuple[str, nnx.Variable, str]]:
    """(torch key, variable, kind) for every tensor of the reference `S` state dict; kind is
    "conv" (OI[D]HW → [D]HWIO), "linear" ([out, in] → [in, out]) or "vector"."""
    for branch, prefix, idx in (("aud", "netcnnaud", SyncNet.AUD),
                                ("lip", "netcnnlip", SyncNet.LIP)):
        for i, _ in idx:
            conv = getattr(net, f"{branch}{i}")
            bn = getattr(net, f"{branch}{i + 1}")
            yield f"{prefix}.{i}.weight", conv.kernel, "conv"
            yield f"{prefix}.{i}.bias", conv.bias, "vector"
            yield from _bn_entries(f"{prefix}.{i + 1}", bn)
    for name in ("fcaud", "fclip"):
        for j in (0, 3):
            lin = getattr(net, f"{name}{j}")
            yield f"net{name}.{j}.weight", lin.kernel, "linear"
            yield f"net{name}.{j}.bias", lin.bias, "vector"
        yield from _bn_entries(f"net{name}.1", getattr(net, f"{name}1"))


def _bn_entries(prefix: str, bn: nnx.BatchNorm):
    yield f"{prefix}.weight", bn.scale, "vector"
    yield f"{prefix}.bias", bn.bias, "vector"
    yield f"{prefix}.running_mean", bn.mean, "vector"
    yield f"{prefix}.running_var", bn.var, "vector"


def _from_torch(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":
        return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    if kind == "linear":
        return value.T
    return value


def _torch_shape(shape: tuple, kind: str) -> tuple:
    if kind == "conv":
        return (shape[-1], shape[-2], *shape[:-2])
    if kind == "linear":
        return (shape[1], shape[0])
    return tuple(shape)


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`syncnet_v2.model` (torch.save of the `S` state dict; .model/.pth/.pt, needs torch),
    or the same keys as `.safetensors` / `.npz` → {torch key: numpy array}."""
    from vasa_jax.models.arcface import read_tensor_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"SyncNet weights not found: {path} (pass syncnet_python's "
                          "data/syncnet_v2.model, or its tensors as .safetensors/.npz)")
    tensors = read_tensor_file(path, (".model", ".pth", ".pt"),
                               f"unsupported SyncNet weights format: {path} (use "
                               "syncnet_v2.model, .pth/.pt, .safetensors or .npz)")
    for pre in ("module.", "__S__."):
        if tensors and all(k.startswith(pre) for k in tensors):
            tensors = {k[len(pre):]: v for k, v in tensors.items()}
    return {k: v for k, v in tensors.items() if not k.endswith(".num_batches_tracked")}


def load_syncnet(path: str | os.PathLike, config: SyncNetConfig = SyncNetConfig()) -> SyncNet:
    """A SyncNet filled from the reference weight file (see `read_weights`); one-line
    ConfigError for missing, extra or mis-shaped tensors."""
    tensors = read_weights(path)
    net = SyncNet(config, rngs=nnx.Rngs(0))
    entries = list(torch_entries(net))
    want = {k for k, _, _ in entries}
    missing, extra = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing or extra:
        raise ConfigError(f"{path}: not a SyncNet `S` state dict for this config (missing "
                          f"{missing[:3]}, unexpected {extra[:3]}): pass syncnet_v2.model with "
                          "SyncNetConfig() (width 1, 224² crops)")
    for key, var, kind in entries:
        value = np.asarray(tensors[key], np.float32)
        if value.shape != _torch_shape(var.shape, kind):
            raise ConfigError(f"{path}: {key} has shape {value.shape}, expected "
                              f"{_torch_shape(var.shape, kind)}: the file does not match "
                              "SyncNetConfig(width, image_size)")
        var.set_value(jnp.asarray(_from_torch(value, kind)))
    net.eval()
    return net


# ----------------------------------------------------------------------------------------------
# Scoring.


def pairwise_offset_distances(video_emb: np.ndarray, audio_emb: np.ndarray,
                              vshift: int = VSHIFT) -> np.ndarray:
    """The reference's `calc_pdist`: [T, D] and [T, D] → dists [T, 2·vshift + 1], where
    dists[t, j] = ‖v_t − a_{t + j − vshift} + 1e-6‖ (zero vectors past the ends)."""
    v = np.asarray(video_emb, np.float64)
    a = np.asarray(audio_emb, np.float64)
    pad = np.concatenate([np.zeros((vshift, a.shape[1])), a, np.zeros((vshift, a.shape[1]))])
    idx = np.arange(len(v))[:, None] + np.arange(2 * vshift + 1)[None]
    return np.sqrt(np.sum((v[:, None] - pad[idx] + 1e-6) ** 2, -1))


def offset_search(video_emb: np.ndarray, audio_emb: np.ndarray, vshift: int = VSHIFT) -> dict:
    """Offset, confidence Sc = median − min and distance Sd = min of the mean distance over
    offsets −vshift…+vshift (the reference's scoring); also the mean-distance curve."""
    dists = pairwise_offset_distances(video_emb, audio_emb, vshift)
    mdist = dists.mean(0)
    j = int(np.argmin(mdist))
    return dict(offset=int(vshift - j), confidence=float(np.median(mdist) - mdist[j]),
                min_dist=float(mdist[j]), mean_dist=mdist.tolist())


def lip_input(frames: np.ndarray, config: SyncNetConfig) -> np.ndarray:
    """uint8 face crops [T, H, W, 3] (RGB) → the network's input frames [T, s, s, 3] (BGR)."""
    from PIL import Image

    frames = np.asarray(frames)
    if config.crop == "lower":
        h, w = frames.shape[1:3]
        frames = frames[:, 3 * h // 8:, 3 * w // 16:w - 3 * w // 16]
    s = config.image_size
    if frames.shape[1] != s or frames.shape[2] != s:
        frames = np.stack([np.asarray(Image.fromarray(f).resize((s, s), Image.BILINEAR))
                           for f in frames])
    return np.ascontiguousarray(frames[..., ::-1])


def _windows(frames: np.ndarray, feats: np.ndarray, config: SyncNetConfig):
    """frames uint8 [T, H, W, 3] and mfcc [13, M] → lip windows [n, 5, s, s, 3] (BGR) and audio
    windows [n, 13, 20], n = min(T, N // 640) − 5 (the reference's window count)."""
    t = len(frames)
    n = t - LIP_FRAMES
    if n < 1:
        raise ConfigError(f"SyncNet needs at least {LIP_FRAMES + 1} frames of video and audio, "
                          f"got {t}: give a longer clip")
    bgr = lip_input(frames, config)
    lips = np.stack([bgr[i:i + LIP_FRAMES] for i in range(n)])
    aud = np.stack([feats[:, MFCC_PER_FRAME * i:MFCC_PER_FRAME * i + AUDIO_STEPS]
                    for i in range(n)])
    return lips, aud


class SyncScorer:
    """Jitted embeddings of a (trained or loaded) SyncNet and the reference's scoring."""

    def __init__(self, net: SyncNet, batch: int = 20):
        net.eval()
        self.config = net.config
        graphdef, self.state = nnx.split(net)
        self.batch = batch

        @jax.jit
        def embed(state, lips, aud):
            m = nnx.merge(graphdef, state)
            return m.lips(lips), m.audio(aud)

        self._embed = embed

    def embeddings(self, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ConfigError(f"SyncNet frames have shape {frames.shape} dtype {frames.dtype}: "
                              "pass uint8 [T, H, W, 3] face crops")
        audio = np.asarray(audio, np.float32).reshape(-1)
        t = min(len(frames), audio.size // (SAMPLE_RATE // FPS))
        lips, aud = _windows(frames[:t], mfcc(audio), self.config)
        v_out, a_out = [], []
        b = self.batch
        for i in range(0, len(lips), b):
            lb, ab = lips[i:i + b], aud[i:i + b]
            n = len(lb)
            if n < b:  # one static shape
                lb = np.concatenate([lb, np.repeat(lb[-1:], b - n, 0)])
                ab = np.concatenate([ab, np.repeat(ab[-1:], b - n, 0)])
            v, a = self._embed(self.state, jnp.asarray(lb, jnp.float32), jnp.asarray(ab))
            v_out.append(np.asarray(v)[:n])
            a_out.append(np.asarray(a)[:n])
        return np.concatenate(v_out), np.concatenate(a_out)

    def __call__(self, frames: np.ndarray, audio: np.ndarray, vshift: int = VSHIFT) -> dict:
        """uint8 frames [T, H, W, 3] + 16 kHz audio → offset, Sc (confidence), Sd (min_dist)."""
        v, a = self.embeddings(frames, audio)
        return offset_search(v, a, vshift)


def sync_scores(net: SyncNet, frames: np.ndarray, audio: np.ndarray,
                vshift: int = VSHIFT) -> dict:
    return SyncScorer(net)(frames, audio, vshift)


# ----------------------------------------------------------------------------------------------
# Training on SynthTalk (multi-way matching over offsets, as SyncNet v2 / "Perfect Match").



def shift_audio(audio: np.ndarray, frames: int) -> np.ndarray:
    """Delays the audio by `frames` video frames (negative: advances it), zero-filled, same
    length."""
    audio = np.asarray(audio, np.float32)
    s = int(frames) * (SAMPLE_RATE // FPS)
    out = np.zeros_like(audio)
    if s >= 0:
        out[s:] = audio[:audio.size - s]
    else:
        out[:s] = audio[-s:]
    return out


def train_syncnet(config: Mapping[str, Any], out_dir: str, log_fn=None) -> dict:
    """Trains a SyncNet on procedurally rendered SynthTalk clips of train identities; writes
    `out_dir/net.json` + orbax params; returns held-out offset accuracy.

    config: width, embed_dim, image_size, crop, resolution (of the SynthTalk renders), clips,
    frames, steps, batch, lr, max_shift, test_clips, seed (see configs/eval.py)."""
    import optax

    from vasa_jax.eval import evaluators

    cfg = dict(config)
    net_cfg = SyncNetConfig(width=cfg["width"], image_size=cfg["image_size"],
                            embed_dim=cfg["embed_dim"], crop=cfg["crop"])
    net = SyncNet(net_cfg, rngs=nnx.Rngs(cfg["seed"]))
    net.train()
    clips = evaluators.render_clips("train", cfg["clips"], cfg["frames"], cfg["resolution"],
                                    cfg["seed"])
    feats = [mfcc(c["audio"]) for c in clips]
    bgr = [lip_input(c["frames"], net_cfg) for c in clips]
    k = int(cfg["max_shift"])
    n_off = 2 * k + 1
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    tx = optax.adam(optax.cosine_decay_schedule(cfg["lr"], cfg["steps"]))
    opt = tx.init(params)

    def loss_fn(params, rest, lips, aud):
        m = nnx.merge(graphdef, params, rest, copy=True)
        v = m.lips(lips)                                   # [B, D]
        b = v.shape[0]
        a = m.audio(aud.reshape(-1, *aud.shape[2:])).reshape(b, n_off, -1)
        d = jnp.sqrt(jnp.sum((v[:, None] - a) ** 2, -1) + 1e-6)
        logp = jax.nn.log_softmax(-d, -1)
        loss = -jnp.mean(logp[:, k])
        acc = jnp.mean(jnp.argmin(d, -1) == k)
        return loss, (acc, nnx.state(m, nnx.Not(nnx.Param)))

    @jax.jit
    def step(params, rest, opt, lips, aud):
        (loss, (acc, rest)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, lips,
                                                                           aud)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), rest, opt, loss, acc

    rng = np.random.default_rng(cfg["seed"])
    t_frames = cfg["frames"]
    history = []
    for s in range(1, cfg["steps"] + 1):
        lips, aud = [], []
        for _ in range(cfg["batch"]):
            c = int(rng.integers(len(clips)))
            t = int(rng.integers(k, t_frames - LIP_FRAMES - k - 4))
            lips.append(bgr[c][t:t + LIP_FRAMES])
            aud.append(np.stack([feats[c][:, 4 * (t + o):4 * (t + o) + AUDIO_STEPS]
                                 for o in range(-k, k + 1)]))
        params, rest, opt, loss, acc = step(params, rest, opt,
                                            jnp.asarray(np.stack(lips), jnp.float32),
                                            jnp.asarray(np.stack(aud)))
        if s % 25 == 0 or s == cfg["steps"]:
            history.append(dict(step=s, loss=float(loss), acc=float(acc)))
            if log_fn:
                log_fn(history[-1])
    net = nnx.merge(graphdef, params, rest)
    net.eval()
    metrics = dict(train=history[-1], held_out=offset_accuracy(
        SyncScorer(net), evaluators.render_clips("test", cfg["test_clips"], cfg["frames"],
                                                 cfg["resolution"], cfg["seed"] + 1)))
    save_syncnet(out_dir, net, metrics, train=cfg)
    return metrics


def offset_accuracy(scorer: SyncScorer, clips: list[dict], shifts=(-3, 0, 3)) -> dict:
    """Held-out check of the metric: each clip's audio delayed by d frames should give offset −d.
    Returns the fraction found exactly and the mean Sc/Sd at shift 0."""
    hits, sc, sd = [], [], []
    for c in clips:
        for d in shifts:
            r = scorer(c["frames"], shift_audio(c["audio"], d), vshift=VSHIFT)
            hits.append(r["offset"] == -d)
            if d == 0:
                sc.append(r["confidence"])
                sd.append(r["min_dist"])
    return dict(offset_accuracy=float(np.mean(hits)), shifts=list(shifts), clips=len(clips),
                sc=float(np.mean(sc)), sd=float(np.mean(sd)))


def save_syncnet(directory: str, net: SyncNet, metrics: dict | None = None,
                 train: dict | None = None) -> None:
    from vasa_jax.eval.evaluators import save_params

    save_params(directory, net, dict(kind="syncnet", config=dataclasses.asdict(net.config),
                                     train=train or {}, metrics=metrics or {}))


def load_trained_syncnet(directory: str) -> tuple[SyncNet, dict]:
    from vasa_jax.eval.evaluators import load_params

    return load_params(directory, "syncnet",
                       lambda meta: SyncNet(SyncNetConfig(**meta["config"]), rngs=nnx.Rngs(0)))


__all__ = ["SyncNet", "SyncNetConfig", "SyncScorer", "load_syncnet", "mfcc", "offset_search",
           "pairwise_offset_distances", "read_weights", "shift_audio", "sync_scores",
           "torch_entries", "train_syncnet"]
