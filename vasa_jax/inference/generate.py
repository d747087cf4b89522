"""Talking-face generation from an inference bundle: one portrait + speech → 25 fps frames.

    gen = Generator.from_bundle("BUNDLE")              # or Generator(load_bundle(...))
    gen.prepare("face.jpg")                            # crop → resize → encoders, cached
    result = gen.generate("speech.wav", Controls(emotion="happy", gaze=(0, 5), seed=0))
    gen.write(result.frames, result.audio, "out.mp4")  # H.264 + AAC (or a folder: PNG frames),
                                                       # labelled + watermarked (provenance.py)

    for frames in gen.stream(chunks, Controls(seed=0)):   # online: W frames at a time
        show(frames)                                       # uint8 [n, S, S, 3]

Pipeline. `prepare` crops the portrait (a pluggable `detector(image) -> (x0, y0, x1, y1)`, a
user box, or the centre square), resizes it to the model input and runs the stage-1 encoders
once: {v_app, z_id, z_pose, z_dyn} and the canonical volume (the source → canonical warp
applied, which depends on the portrait only) stay cached. Audio (16 kHz mono; files of any format/rate
via `media.read_audio`) becomes features at 25 fps (`bundle.manifest["audio"]`), normalised with
the bundle's statistics; the MotionDiT samples windows of W frames, each conditioned on the K
previous frames it generated (and their audio), gaze, distance and emotion, with one CFG scale
per condition; the motion is de-normalised to X = [z_pose, z_dyn] and rendered by the face
decoder in fixed-size batches.

Static shapes everywhere, so one compile serves any audio length and any chunking:
  * audio features are computed per window from a fixed-length segment of samples
    (log-mel: the window's W frames plus one frame of context each side, which covers the
    STFT's reach of n_fft/2 − hop/2 = 192 samples) — the same function offline and online;
  * the DiT runs one jitted `WindowSampler` per (steps, guided conditions);
  * the decoder and the encoders run jitted at a fixed batch, the last batch padded.
`Generator.trace_counts()` reports how often each jitted function was traced.

Offline vs streaming (log-mel bundles): `stream` yields exactly the windows `generate` computes,
with the same features (a window's segment holds the same samples in both, zero-filled past
the ends like the offline STFT's constant padding), the same history and the same per-window
random keys, so the outputs are identical. Wav2Vec2 bundles: `generate` runs Wav2Vec2 over the
whole track (as the features were extracted for training; this compiles once per track
length), `stream` over a bounded segment per window (2 s of left context, 80 ms look-ahead),
which approximates it.

Imports only jax, flax, numpy, PIL (through the media module) and vasa_jax's models, media
and inference modules.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vasa_jax import diffusion, provenance
from vasa_jax.data import media
from vasa_jax.data.latents import Normalizer
from vasa_jax.errors import ConfigError
from vasa_jax.inference.bundle import Bundle, load_bundle
from vasa_jax.inference.motion import HistoryWindows, WindowSampler
from vasa_jax.models import motion_dit
from vasa_jax.models.audio import make_audio_features
from vasa_jax.models.face import POSE_DIM

FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
SILENCE_PEAK = 1e-4          # audio whose peak |sample| is below this is "silent"
# SynthTalk's emotions (vasa_jax/data/synthtalk/spec.py), the order of the one-hot condition.
EMOTIONS = ("neutral", "happy", "sad", "angry", "surprised")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")
# Wav2Vec2 streaming: context frames around a window (its features see the whole clip offline).
W2V_LEFT_FRAMES, W2V_RIGHT_FRAMES = 50, 2

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------------------------
# Controls.


@dataclasses.dataclass
class Controls:
    """What to generate. Everything is optional; `None` picks the bundle's default.

    gaze         (θ, φ) main gaze direction in degrees (default: the training-set mean)
    distance     head-to-camera distance in the training data's units (default: its mean;
                 SynthTalk ≈ 3.2)
    emotion      a name from EMOTIONS, an index, or a vector of length emotion_dim
                 (one-hot, probabilities or an offset); default "neutral"
    cfg          {condition: λ} per-condition guidance scales over
                 motion_dit.CONDITIONS; merged over the bundle's defaults
                 (manifest["motion"]["sample"]["cfg"], VASA-1: audio 0.5, gaze 1.0)
    steps        DDIM steps (default: manifest["motion"]["sample"]["steps"])
    seed         sampling seed (window i uses fold_in(key(seed), i), as `sample_sequence`)
    head_pose    a pose sequence to follow, one row per 25 fps frame: [T, 3] (yaw, pitch,
                 roll in degrees; replaces the generated angles) or [T, 7] (the whole z_pose).
                 The followed pose also feeds the next window's history.
    driving_video  video-driven reenactment: a video path or uint8 frames [T, H, W, 3]
                 (at `driving_fps`); the motion comes from the stage-1 motion encoder applied
                 to its frames instead of the DiT (offline only)
    driving_box  crop box for the driving frames (default: the generator's detector/centre)
    """

    gaze: Sequence[float] | None = None
    distance: float | None = None
    emotion: str | int | Sequence[float] | None = None
    cfg: Mapping[str, float] | None = None
    steps: int | None = None
    seed: int = 0
    head_pose: Any = None
    driving_video: Any = None
    driving_fps: float = FPS
    driving_box: Box | None = None


@dataclasses.dataclass
class _Resolved:
    gaze: np.ndarray         # [1, 2] normalised
    distance: np.ndarray     # [1, 1] normalised
    emotion: np.ndarray      # [1, E]
    scales: dict
    steps: int
    seed: int
    head_pose: np.ndarray | None   # [T, 3] or [T, 7] raw


@dataclasses.dataclass
class Source:
    """A prepared portrait: the model-size crop and its cached stage-1 latents (batch 1)."""

    image: np.ndarray            # uint8 [I, I, 3], I = the face model's input size
    box: Box                     # crop box in the input image
    latents: dict                # v_app, z_id, z_pose, z_dyn, v_can (canonical volume)


@dataclasses.dataclass
class Result:
    """Generated video: frames uint8 [T, S, S, 3] at `fps`, the 16 kHz audio [N] (None for a
    silent reenactment) and the motion X = [z_pose, z_dyn] [T, Dx] the frames were rendered
    from (raw, de-normalised)."""

    frames: np.ndarray
    audio: np.ndarray | None
    motion: np.ndarray
    fps: int = FPS

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


# ----------------------------------------------------------------------------------------------
# Inputs.


def mono_float(samples: Any, name: str) -> np.ndarray:
    """An in-memory track or chunk → float32 [N]; one-line errors for a wrong shape or dtype and
    for NaN/inf samples."""
    wav = np.asarray(samples)
    if wav.ndim != 1 or not (np.issubdtype(wav.dtype, np.floating) or wav.size == 0):
        raise ConfigError(f"{name} has shape {wav.shape} dtype {wav.dtype}: pass 16 kHz mono "
                          "float samples [N] (average the channels, resample to 16 kHz)")
    wav = wav.astype(np.float32)
    if not np.all(np.isfinite(wav)):
        raise ConfigError(f"{name} contains NaN or inf samples: fix the upstream audio")
    return wav


def load_audio(audio: Any, name: str = "audio") -> np.ndarray:
    """A path (any format/rate/channels) or a float array at 16 kHz → float32 mono [N]; one-line
    errors for empty, too short (< one 40 ms frame), non-finite or silent (peak < 1e-4) audio."""
    if isinstance(audio, (str, os.PathLike)):
        name = os.fspath(audio)
        wav = media.read_audio(audio, SAMPLE_RATE)
    else:
        wav = mono_float(audio, name)
    if wav.size == 0:
        raise ConfigError(f"{name} is empty (0 samples): give a speech track")
    if wav.size < SAMPLES_PER_FRAME:
        raise ConfigError(f"{name} lasts {wav.size / SAMPLE_RATE * 1000:.0f} ms, shorter than one "
                          f"video frame (40 ms): give at least {SAMPLES_PER_FRAME} samples at "
                          "16 kHz")
    peak = float(np.max(np.abs(wav)))
    if peak < SILENCE_PEAK:
        raise ConfigError(f"{name} is silent (peak amplitude {peak:.1e} < {SILENCE_PEAK:g}): give "
                          "a track with speech, or check that it is not muted")
    return wav


def to_rgb_array(image: Any, name: str = "image") -> np.ndarray:
    """A path (PNG/JPEG/WebP; EXIF rotation, alpha on white, grey → RGB) or an array
    ([H, W] grey, [H, W, 3] RGB, [H, W, 4] RGBA; uint8) → uint8 RGB [H, W, 3]."""
    if isinstance(image, (str, os.PathLike)):
        return media.read_image(image)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ConfigError(f"{name} has dtype {arr.dtype}: pass uint8 pixels "
                          "(np.clip(x, 0, 255).astype(np.uint8)) or an image path")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ConfigError(f"{name} has shape {arr.shape}: pass [H, W, 3] RGB, [H, W, 4] RGBA or "
                          "[H, W] grey uint8 pixels")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        alpha = arr[:, :, 3:].astype(np.float32) / 255.0
        rgb = arr[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.round(rgb).astype(np.uint8)
    return np.ascontiguousarray(arr)


def centre_box(height: int, width: int) -> Box:
    """The largest centred square."""
    side = min(height, width)
    y0, x0 = (height - side) // 2, (width - side) // 2
    return x0, y0, x0 + side, y0 + side


def square_box(box: Sequence[float], height: int, width: int) -> Box:
    """(x0, y0, x1, y1) → the square of side max(w, h) around its centre, shifted (and if
    needed shrunk) to lie inside the image."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ConfigError(f"face box {box!r}: expected four numbers (x0, y0, x1, y1)") from None
    if not (x1 > x0 and y1 > y0) or not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ConfigError(f"face box {tuple(box)}: need x1 > x0 and y1 > y0 (pixels)")
    side = int(round(min(max(x1 - x0, y1 - y0), height, width)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return left, top, left + side, top + side


def crop_resize(image: np.ndarray, box: Box, size: int, name: str = "image") -> np.ndarray:
    """Crops a square box and resizes it to size×size (Lanczos); the crop must not be smaller."""
    from PIL import Image

    x0, y0, x1, y1 = box
    side = x1 - x0
    if side < size:
        h, w = image.shape[:2]
        where = "" if (x0, y0, x1, y1) == centre_box(h, w) else f" (face crop {side}x{side})"
        raise ConfigError(f"{name} is {w}x{h}{where}, smaller than the model input "
                          f"{size}x{size}: give a portrait whose face crop is at least "
                          f"{size} pixels wide")
    crop = image[y0:y1, x0:x1]
    if side == size:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.LANCZOS), np.uint8)


def _parse_head_pose(pose: Any) -> np.ndarray:
    if isinstance(pose, (str, os.PathLike)):
        path = os.fspath(pose)
        if not os.path.isfile(path):
            raise ConfigError(f"head-pose file not found: {path} (give a .npy or .csv/.txt file "
                              "with one row per frame)")
        try:
            pose = np.load(path) if path.endswith(".npy") else np.loadtxt(path, delimiter=",",
                                                                         ndmin=2)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read head-pose file {path}: {' '.join(str(e).split())} "
                              "(rows of 3 (yaw, pitch, roll) or 7 numbers)") from None
    arr = np.asarray(pose, np.float32)
    if arr.ndim != 2 or arr.shape[1] not in (3, POSE_DIM) or arr.shape[0] < 1:
        raise ConfigError(f"head_pose has shape {arr.shape}: give [T, 3] (yaw, pitch, roll in "
                          f"degrees) or [T, {POSE_DIM}] (z_pose), one row per 25 fps frame")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("head_pose contains NaN or inf: give finite angles")
    return arr


# ----------------------------------------------------------------------------------------------
# Audio features, one window at a time.


class _WindowFeatures:
    """Normalised audio features of W frames [t0, t0+W) from a fixed-length sample segment
    starting at sample 640·(t0 − left) (zeros outside the signal): [1, W, Da]."""

    def __init__(self, front, norm: Normalizer, window: int, counter: Callable[[str], None]):
        self.front = front
        self.window = window
        self.kind = front.kind
        if self.kind == "logmel":
            cfg = front.config
            reach = max(0, cfg.n_fft // 2 - cfg.hop // 2)   # samples past a frame's own span
            self.left = self.right = -(-reach // SAMPLES_PER_FRAME)
            self.lookahead = reach
            self.exact = True
        else:
            self.left, self.right = W2V_LEFT_FRAMES, W2V_RIGHT_FRAMES
            self.lookahead = self.right * SAMPLES_PER_FRAME
            self.exact = False
        self.segment = SAMPLES_PER_FRAME * (self.left + window + self.right)
        mean = jnp.asarray(norm.stats["audio_feat_mean"])
        std = jnp.asarray(norm.stats["audio_feat_std"])
        left = self.left

        def window_fn(params, seg):
            counter("audio_window")
            feats = front.apply(params, seg)[:, left:left + window]
            return (feats - mean) / std

        def whole_fn(params, audio):
            counter("audio_track")
            return (front.apply(params, audio) - mean) / std

        self._window = jax.jit(window_fn)
        self._whole = jax.jit(whole_fn)

    def __call__(self, segment: np.ndarray) -> jax.Array:
        return self._window(self.front.params, jnp.asarray(segment, jnp.float32)[None])

    def whole(self, audio: np.ndarray) -> jax.Array:
        """Features of a whole track [1, N // 640, Da] (Wav2Vec2 offline)."""
        return self._whole(self.front.params, jnp.asarray(audio, jnp.float32)[None])


def _segment(buf: np.ndarray, lo: int, length: int) -> np.ndarray:
    """buf[lo:lo + length], zero-filled where buf ends first (one static shape for the jit)."""
    part = buf[lo:lo + length]
    if part.size == length:
        return part
    seg = np.zeros(length, np.float32)
    seg[:part.size] = part
    return seg


def _windows_from_chunks(feats: _WindowFeatures, chunks: Iterable[Any],
                         stats: dict | None = None) -> Iterator[tuple[jax.Array, int]]:
    """Audio chunks (any lengths) → (features [1, W, Da], n valid frames) per window.

    Keeps only the samples from the current window's segment start on (memory bounded by the
    segment plus one chunk). A window is computed once its segment's last needed sample has
    arrived (W frames + the features' look-ahead) or the audio has ended."""
    w, spf = feats.window, SAMPLES_PER_FRAME
    buf = np.zeros(feats.left * spf, np.float32)   # zeros before sample 0
    buf_start = -feats.left * spf                  # absolute index of buf[0]
    total, t0, peak = 0, 0, 0
    for i, chunk in enumerate(chunks):
        chunk = mono_float(chunk, f"audio chunk {i}")
        buf = np.concatenate([buf, chunk])
        total += chunk.size
        peak = max(peak, buf.size)
        while total >= spf * (t0 + w) + feats.lookahead:
            yield feats(_segment(buf, spf * (t0 - feats.left) - buf_start, feats.segment)), w
            t0 += w
            cut = spf * (t0 - feats.left) - buf_start
            buf, buf_start = buf[cut:], buf_start + cut
    if stats is not None:
        stats["max_buffer_samples"] = peak
    num_frames = total // spf
    while t0 < num_frames:
        seg = _segment(buf, spf * (t0 - feats.left) - buf_start, feats.segment)
        yield feats(seg), min(w, num_frames - t0)
        t0 += w
    if num_frames == 0:
        raise ConfigError(f"the audio stream held {total} samples, less than one video frame "
                          f"({spf} samples at 16 kHz): stream more audio")


# ----------------------------------------------------------------------------------------------
# Motion, window by window.


class _MotionWindows:
    """DiT sampling with K frames of history through `inference.motion.HistoryWindows` (the
    walker `sample_sequence` uses: window i samples with fold_in(key(seed), i)), plus an
    optional head-pose sequence that overrides the generated pose (and feeds the history)."""

    def __init__(self, gen: "Generator", ctl: _Resolved):
        self.gen, self.ctl = gen, ctl
        sampler = gen._sampler(ctl.steps, tuple(ctl.scales))
        self.walker = HistoryWindows(sampler, ctl.gaze, ctl.distance, ctl.emotion,
                                     jax.random.key(ctl.seed), audio_dim=gen.motion.audio_dim,
                                     scales=ctl.scales)
        self.frame = 0

    def step(self, feats: jax.Array, n: int) -> np.ndarray:
        """Features [1, W, Da] with n valid frames → raw motion [n, Dx]."""
        x = np.asarray(self.walker.step(feats, n), np.float32)
        norm = self.gen.norm
        raw = norm.motion_to_raw(x[0])
        pose = self.ctl.head_pose
        if pose is not None:
            end = self.frame + n
            if end > pose.shape[0]:
                raise ConfigError(f"head_pose has {pose.shape[0]} rows but the audio needs at "
                                  f"least {end} frames: give one row per 25 fps frame")
            raw = raw.copy()
            raw[:, :pose.shape[1]] = pose[self.frame:end]
            x = norm("motion", raw)[None].astype(np.float32)
        self.walker.push(x, feats[:, :n])
        self.frame += n
        return raw.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The generator.


class Generator:
    """Portrait + audio → talking-face frames with a loaded `Bundle` (see the module docstring).

    detector: optional `detector(image uint8 [H, W, 3]) -> (x0, y0, x1, y1) | None` face box;
      the box is squared around its centre. Default: the centre square.
    render_batch: frames per decoder call (static; default: the DiT window W).
    wav2vec2_path: the local Hugging Face Wav2Vec2 checkpoint of a Wav2Vec2 bundle (default:
      the path recorded in its manifest, when it exists here).
    audio_features: an already built front end (`make_audio_features(...)`) instead.
    """

    def __init__(self, bundle: Bundle, *, detector: Callable | None = None,
                 render_batch: int | None = None, wav2vec2_path: str | None = None,
                 audio_features: Any = None):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.face, self.motion = bundle.face, bundle.motion
        self.image_size = int(bundle.image_size)   # frames drawn
        self.input_size = int(bundle.input_size)   # portrait and driving crops read
        self.detector = detector
        self.norm = Normalizer(bundle.stats)
        self.traces: collections.Counter = collections.Counter()
        self.window, self.history = self.motion.window, self.motion.history
        self.motion_dim = self.motion.motion_dim
        dyn_dim = int(self.face.motion.dyn_head.out_features)
        if self.motion_dim != POSE_DIM + dyn_dim:
            raise ConfigError(f"bundle {bundle.path!r}: the MotionDiT's motion_dim "
                              f"{self.motion_dim} != 7 + the face model's dyn_dim {dyn_dim}; "
                              "its two stages do not belong together: re-export it")
        self.render_batch = int(render_batch or self.window)
        if self.render_batch < 1:
            raise ConfigError(f"render_batch={render_batch}: use a positive number of frames")
        sample = self.manifest.get("motion", {}).get("sample", {})
        self.default_steps = int(sample.get("steps", 10))
        self.default_cfg = {k: float(v) for k, v in dict(sample.get("cfg", {})).items()}
        sched = self.manifest.get("motion", {}).get("diffusion", {})
        self.schedule = diffusion.make_schedule(**sched)
        self._samplers: dict = {}
        self.last_stream_stats: dict = {}
        self.source: Source | None = None

        front = audio_features or self._audio_front(wav2vec2_path)
        if int(front.feature_dim) != int(self.motion.audio_dim):
            raise ConfigError(f"audio features have {front.feature_dim} dims but the bundle's "
                              f"MotionDiT expects {self.motion.audio_dim}: use the front end it "
                              "was trained with (manifest['audio'])")
        self.features = _WindowFeatures(front, self.norm, self.window, self._count)

        f_def, f_state = nnx.split(self.face)
        self._face_state = f_state
        count = self._count

        def encode(state, images):                       # uint8 [1, I, I, 3]
            count("encode")
            model = nnx.merge(f_def, state)
            lat = model.encode(images.astype(jnp.float32) / 127.5 - 1.0)
            # The source → canonical warp depends on the portrait only: done once, here.
            canonical = model.to_canonical(lat["v_app"], lat["z_id"], lat["z_pose"],
                                           lat["z_dyn"], return_grid="f_src" in lat)
            if "f_src" in lat:   # the source skip reads the grid again per frame
                lat["v_can"], lat["g_s2c"] = canonical
            else:
                lat["v_can"] = canonical
            return lat

        def encode_motion(state, images):                # uint8 [R, I, I, 3]
            count("encode_motion")
            z_pose, z_dyn = nnx.merge(f_def, state).encode_motion(
                images.astype(jnp.float32) / 127.5 - 1.0)
            return jnp.concatenate([z_pose, z_dyn], axis=-1)

        def decode(state, src, motion):                  # motion [R, Dx] raw
            count("decode")
            model = nnx.merge(f_def, state)
            r = motion.shape[0]
            rep = {k: jnp.broadcast_to(src[k], (r, *src[k].shape[1:]))
                   for k in ("v_can", "z_id", "f_src", "g_s2c") if k in src}
            img = model.decode_canonical(rep["v_can"], rep["z_id"], motion[:, :POSE_DIM],
                                         motion[:, POSE_DIM:], f_src=rep.get("f_src"),
                                         g_s2c=rep.get("g_s2c"))
            return jnp.clip(jnp.round((img + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

        self._encode = jax.jit(encode)
        self._encode_motion = jax.jit(encode_motion)
        self._decode = jax.jit(decode)

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_bundle(cls, path: str, **kwargs) -> "Generator":
        return cls(load_bundle(path), **kwargs)

    def _count(self, name: str) -> None:
        self.traces[name] += 1   # runs while tracing only: counts compiles, not calls

    def trace_counts(self) -> dict[str, int]:
        """How many times each jitted function was traced (1 each = one compile serves all)."""
        out = dict(self.traces)
        for (steps, guided), s in self._samplers.items():
            out[f"sampler[steps={steps},cfg={'+'.join(guided) or 'none'}]"] = s.num_traces
        return out

    def _audio_front(self, wav2vec2_path: str | None):
        info = dict(self.manifest.get("audio") or {})
        kind = info.get("kind", "logmel")
        if kind == "logmel":
            dim = int(info.get("feature_dim", self.motion.audio_dim))
            return make_audio_features("logmel", **({} if dim == 80 else {"n_mels": dim}))
        if kind == "wav2vec2":
            path = wav2vec2_path or info.get("wav2vec2_path")
            if not path or not os.path.exists(path):
                recorded = info.get("wav2vec2_path")
                raise ConfigError("this bundle's motion model was trained on Wav2Vec2 features: "
                                  "pass the local Hugging Face checkpoint directory with "
                                  "--wav2vec2 DIR (wav2vec2_path=DIR)"
                                  + (f"; the recorded {recorded!r} does not exist here"
                                     if recorded else ""))
            return make_audio_features("wav2vec2", wav2vec2_path=path)
        raise ConfigError(f"bundle manifest names audio features {kind!r}: expected 'logmel' or "
                          "'wav2vec2'; re-export the bundle")

    def _sampler(self, steps: int, guided: tuple[str, ...]) -> WindowSampler:
        key = (int(steps), tuple(guided))
        if key not in self._samplers:
            self._samplers[key] = WindowSampler(self.motion, self.schedule, num_steps=int(steps),
                                                scales={c: 0.0 for c in guided})
        return self._samplers[key]

    # ------------------------------------------------------------------ controls

    def resolve(self, controls: Controls | None) -> _Resolved:
        """Validates controls (one-line ConfigError naming the field) and normalises them."""
        c = controls or Controls()
        if not isinstance(c, Controls):
            raise ConfigError(f"controls must be a Controls, got {type(c).__name__}")
        norm, st = self.norm, self.norm.stats
        if c.gaze is None:
            gaze = st["gaze_mean"].reshape(2)
        else:
            gaze = _floats(c.gaze, "gaze", 2, "(θ, φ) in degrees, e.g. (0, 5)")
        if c.distance is None:
            dist = st["distance_mean"].reshape(1)
        else:
            dist = _floats([c.distance] if np.ndim(c.distance) == 0 else c.distance, "distance",
                           1, "one number, e.g. 3.2")
            if dist[0] <= 0:
                raise ConfigError(f"distance={dist[0]:g}: use a positive head-to-camera distance")
        e_dim = self.motion.emotion_dim
        emo = c.emotion if c.emotion is not None else "neutral"
        if isinstance(emo, str):
            name = emo.strip().lower()
            if name not in EMOTIONS[:e_dim]:
                raise ConfigError(f"unknown emotion {emo!r}: choose one of "
                                  f"{', '.join(EMOTIONS[:e_dim])} or pass a vector of {e_dim}")
            emotion = np.eye(e_dim, dtype=np.float32)[EMOTIONS.index(name)]
        elif np.ndim(emo) == 0:
            idx = int(emo)
            if not 0 <= idx < e_dim:
                raise ConfigError(f"emotion index {idx} out of range: use 0..{e_dim - 1}")
            emotion = np.eye(e_dim, dtype=np.float32)[idx]
        else:
            emotion = _floats(emo, "emotion", e_dim, f"a vector of {e_dim} numbers")
        scales = dict(self.default_cfg)
        for name, v in dict(c.cfg or {}).items():
            if name not in motion_dit.CONDITIONS:
                raise ConfigError(f"unknown guidance condition {name!r}: use one of "
                                  f"{', '.join(motion_dit.CONDITIONS)}")
            v = float(v)
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"cfg scale for {name} is {v}: use a number >= 0")
            scales[name] = v
        scales = {k: scales[k] for k in motion_dit.CONDITIONS if k in scales}
        steps = self.default_steps if c.steps is None else c.steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not (
                1 <= steps <= self.schedule.num_train_timesteps):
            raise ConfigError(f"steps={steps!r}: use an integer in "
                              f"[1, {self.schedule.num_train_timesteps}] (10 is fast, 50 VASA-1)")
        if isinstance(c.seed, bool) or not isinstance(c.seed, (int, np.integer)):
            raise ConfigError(f"seed={c.seed!r}: use an integer")
        pose = None if c.head_pose is None else _parse_head_pose(c.head_pose)
        return _Resolved(gaze=norm("gaze", gaze)[None].astype(np.float32),
                         distance=norm("distance", dist)[None].astype(np.float32),
                         emotion=emotion[None].astype(np.float32), scales=scales,
                         steps=int(steps), seed=int(c.seed), head_pose=pose)

    # ------------------------------------------------------------------ portrait

    def prepare(self, image: Any, box: Sequence[float] | None = None, *,
                name: str | None = None) -> Source:
        """Crops, resizes and encodes a portrait once; the result is cached as `self.source`.

        image: a path (PNG/JPEG/WebP, EXIF-rotated, RGBA/grey handled) or uint8 pixels.
        box: (x0, y0, x1, y1) face box (default: the detector's, else the centre square).
        name: how errors call the image (default: its path, or "image")."""
        if name is None:
            name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "image"
        rgb = to_rgb_array(image, name)
        crop, used = self._crop(rgb, box, name)
        latents = self._encode(self._face_state, jnp.asarray(crop)[None])
        self.source = Source(image=crop, box=used, latents=dict(latents))
        return self.source

    def _crop(self, rgb: np.ndarray, box, name: str) -> tuple[np.ndarray, Box]:
        h, w = rgb.shape[:2]
        if box is None and self.detector is not None:
            box = self.detector(rgb)
            if box is None:
                raise ConfigError(f"no face found in {name}: pass a face box (x0, y0, x1, y1) "
                                  "or use an image with a clearly visible face")
        used = centre_box(h, w) if box is None else square_box(box, h, w)
        return crop_resize(rgb, used, self.input_size, name), used

    def _source(self, source: Source | None) -> Source:
        src = source or self.source
        if src is None:
            raise ConfigError("no portrait prepared: call prepare(image) first")
        return src

    # ------------------------------------------------------------------ rendering

    def render(self, motion: np.ndarray, source: Source | None = None) -> Iterator[np.ndarray]:
        """Raw motion [T, Dx] → uint8 frames, yielded in batches of up to `render_batch`
        (every decoder call has the same shape: the last batch is padded, then cropped)."""
        src = self._source(source)
        r = self.render_batch
        motion = np.asarray(motion, np.float32)
        for lo in range(0, len(motion), r):
            part = motion[lo:lo + r]
            n = len(part)
            if n < r:
                part = np.concatenate([part, np.repeat(part[-1:], r - n, axis=0)])
            yield np.asarray(self._decode(self._face_state, src.latents, jnp.asarray(part)))[:n]

    def encode_video_motion(self, frames: Any, fps: float = FPS, num_frames: int | None = None,
                            box: Sequence[float] | None = None) -> np.ndarray:
        """Driving frames (a video path or uint8 [T, H, W, 3] at `fps`) → raw motion
        [num_frames, Dx] at 25 fps from the stage-1 motion encoder (nearest-frame resampling;
        the last frame is held when the video is shorter than num_frames)."""
        if isinstance(frames, (str, os.PathLike)):
            name = os.fspath(frames)
            frames, fps = media.read_video(frames)
        else:
            name = "driving video"
            frames = np.asarray(frames)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or \
                    frames.shape[0] < 1:
                raise ConfigError(f"driving video frames have shape {frames.shape} dtype "
                                  f"{frames.dtype}: pass uint8 [T, H, W, 3] or a video path")
        if not fps or fps <= 0:
            fps = FPS
        n_src = len(frames)
        if num_frames is None:
            num_frames = max(1, int(math.floor(n_src / fps * FPS + 1e-6)))
        idx = np.minimum(np.floor(np.arange(num_frames) * fps / FPS + 1e-6).astype(int),
                         n_src - 1)
        h, w = frames.shape[1:3]
        if box is None and self.detector is None:
            crop_box = centre_box(h, w)
        else:
            crop_box = None if box is None else square_box(box, h, w)
        r = self.render_batch
        out = []
        for lo in range(0, num_frames, r):
            sel = idx[lo:lo + r]
            crops = []
            for i in sel:
                if crop_box is None:
                    crop, _ = self._crop(frames[i], None, name)
                else:
                    crop = crop_resize(frames[i], crop_box, self.input_size, name)
                crops.append(crop)
            n = len(crops)
            crops += [crops[-1]] * (r - n)
            out.append(np.asarray(self._encode_motion(self._face_state,
                                                      jnp.asarray(np.stack(crops))))[:n])
        return np.concatenate(out).astype(np.float32)

    # ------------------------------------------------------------------ motion

    def motion_offline(self, audio: np.ndarray, ctl: _Resolved) -> np.ndarray:
        """Raw motion [N // 640, Dx] for a whole 16 kHz track."""
        mw = _MotionWindows(self, ctl)
        parts = []
        if self.features.exact:
            for feats, n in _windows_from_chunks(self.features, [audio]):
                parts.append(mw.step(feats, n))
        else:   # Wav2Vec2: features of the whole track, then windows of them
            whole = self.features.whole(audio)
            t, w = whole.shape[1], self.window
            for t0 in range(0, t, w):
                n = min(w, t - t0)
                feats = whole[:, t0:t0 + n]
                if n < w:
                    feats = jnp.pad(feats, ((0, 0), (0, w - n), (0, 0)))
                parts.append(mw.step(feats, n))
        return np.concatenate(parts)

    # ------------------------------------------------------------------ generation

    def generate(self, audio: Any = None, controls: Controls | None = None, *,
                 source: Source | None = None,
                 progress: Callable[[int], None] | None = None) -> Result:
        """Offline: a whole track (path or 16 kHz float array) → `Result` with T = N // 640
        frames. With controls.driving_video the audio is optional (T then follows the video)."""
        num_frames, wav, batches = self.iter_generate(audio, controls, source=source)
        frames, motion = [], []
        for f, m in batches:
            frames.append(f)
            motion.append(m)
            if progress is not None:
                progress(len(f))
        return Result(frames=np.concatenate(frames), audio=wav, motion=np.concatenate(motion))

    def iter_generate(self, audio: Any = None, controls: Controls | None = None, *,
                      source: Source | None = None):
        """Like `generate`, but lazy: (num_frames, audio or None, iterator of (frames, motion)
        batches). Validation happens here, before anything is rendered."""
        src = self._source(source)
        c = controls or Controls()
        ctl = self.resolve(c)
        wav = None if audio is None else load_audio(audio)
        if c.driving_video is not None:
            t = None if wav is None else wav.size // SAMPLES_PER_FRAME
            motion = self.encode_video_motion(c.driving_video, c.driving_fps, t, c.driving_box)
            if ctl.head_pose is not None:
                p = ctl.head_pose
                if p.shape[0] < len(motion):
                    raise ConfigError(f"head_pose has {p.shape[0]} rows but the video needs "
                                      f"{len(motion)} frames: give one row per 25 fps frame")
                motion[:, :p.shape[1]] = p[:len(motion)]
        else:
            if wav is None:
                raise ConfigError("no audio given: pass a speech track (or a driving video)")
            if ctl.head_pose is not None and ctl.head_pose.shape[0] < wav.size // SAMPLES_PER_FRAME:
                raise ConfigError(f"head_pose has {ctl.head_pose.shape[0]} rows but the audio "
                                  f"needs {wav.size // SAMPLES_PER_FRAME} frames: give one row "
                                  "per 25 fps frame")
            motion = self.motion_offline(wav, ctl)

        def batches():
            lo = 0
            for frames in self.render(motion, src):
                yield frames, motion[lo:lo + len(frames)]
                lo += len(frames)

        return len(motion), wav, batches()

    def stream(self, audio_chunks: Iterable[Any], controls: Controls | None = None, *,
               source: Source | None = None) -> Iterator[np.ndarray]:
        """Online: 16 kHz mono float chunks of any length → uint8 frames [n, S, S, 3] in render
        batches (n = render_batch, or what is left of the window), each yielded as soon as it
        is decoded: a window's motion is sampled once its audio (plus the features' look-ahead)
        has arrived, then its frames leave batch by batch, so a render_batch below W brings the
        first frame forward. Holds only the current window's samples and the K-frame history."""
        src = self._source(source)
        c = controls or Controls()
        if c.driving_video is not None:
            raise ConfigError("video-driven reenactment runs offline only: use generate()")
        ctl = self.resolve(c)
        mw = _MotionWindows(self, ctl)
        self.last_stream_stats = stats = {}
        for feats, n in _windows_from_chunks(self.features, audio_chunks, stats):
            raw = mw.step(feats, n)
            yield from self.render(raw, src)

    # ------------------------------------------------------------------ output

    def write(self, frames: Any, audio: np.ndarray | None, out: str | os.PathLike, *,
              png: bool | None = None, watermark: bool = True) -> Path:
        """`write` labelled as this bundle's output: container metadata (AI-generated, tool,
        version, checkpoint hash, creation time) and the invisible watermark carrying the
        checkpoint-hash prefix (`vasa_jax.provenance`). watermark=False leaves the frames
        unmarked; the metadata records that (vasa_jax_watermark=off)."""
        label = provenance.Provenance(checkpoint_hash=self.bundle.checkpoint_hash,
                                      watermark=watermark)
        return write(frames, audio, out, png=png, label=label)


def write(frames: Any, audio: np.ndarray | None, out: str | os.PathLike, *,
          png: bool | None = None, label: provenance.Provenance | None = None) -> Path:
    """Writes frames (uint8 [T, H, W, 3] or an iterable of [H, W, 3] frames) at 25 fps.

    out with a video suffix (.mp4/.mov/.mkv/.m4v): H.264 + the 16 kHz `audio` muxed as AAC;
    otherwise (or png=True) a directory of 000000.png, ... (the audio is not written there).
    Both writers are atomic: a failure leaves no partial output.
    label: how the output is labelled (default: a model's output, checkpoint unknown, with
    the watermark); frames are watermarked as they stream through, the labels go into the
    container tags (PNG text chunks for frames)."""
    out = Path(out)
    as_png = out.suffix.lower() not in VIDEO_SUFFIXES if png is None else bool(png)
    if as_png and out.suffix and png is None:
        raise ConfigError(f"output {out} has suffix {out.suffix!r}: use .mp4 (video) or a "
                          "directory path without a suffix (PNG frames)")
    label = label or provenance.Provenance()
    frames, tags = label.mark(frames), label.metadata()
    if as_png:
        media.write_frames_png(out, frames, metadata=tags)
        return out
    return media.write_video(out, frames, fps=FPS, audio=audio, sample_rate=SAMPLE_RATE,
                             metadata=tags)


def _floats(value: Any, name: str, n: int, hint: str) -> np.ndarray:
    try:
        arr = np.asarray(value, np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: expected {hint}") from None
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name}={value!r}: expected {hint}")
    return arr


__all__ = ["Controls", "EMOTIONS", "Generator", "Normalizer", "Result", "SILENCE_PEAK", "Source",
           "centre_box", "crop_resize", "load_audio", "square_box", "to_rgb_array", "write"]
