"""Video, audio and image I/O on PyAV and Pillow.

Conventions: frames are uint8 RGB, channels-last, ``[T, H, W, 3]``; images are
``[H, W, 3]``; audio is float32 mono ``[N]`` in ``[-1, 1]``.

Only numpy, av, PIL and the standard library are imported here: the inference
path uses this module on machines without the training data stack.

Every user-facing failure raises :class:`MediaError` with a one-line message
that names the problem and how to fix it. Writers are atomic: they write to a
temporary sibling of the output and rename it into place, so a failed write
leaves neither a partial output nor a temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import wave
from collections.abc import Iterable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

__all__ = [
    "MediaError",
    "probe_duration",
    "read_audio",
    "read_metadata",
    "read_image",
    "read_video",
    "write_frames_png",
    "write_png",
    "write_video",
    "write_wav",
]

PathLike = str | os.PathLike[str]

_AUDIO_HINT = "give a wav/flac/mp3/m4a file with speech"
_VIDEO_HINT = "give an mp4/mov/mkv/webm file with a video stream"
_IMAGE_HINT = "give a PNG, JPEG or WebP file"
_TO_UINT8 = "convert with np.clip(x, 0, 255).astype(np.uint8)"
_FRAME_NAME = re.compile(r"^\d{6}\.png$")


class MediaError(ValueError):
    """A media file is missing, unreadable or the data to write is malformed."""


# --------------------------------------------------------------------------- helpers


def _one_line(err: object) -> str:
    # FFmpegError's str() repeats the errno and filename; strerror is the readable part.
    text = getattr(err, "strerror", None) if isinstance(err, av.FFmpegError) else None
    return " ".join(str(text or err).split())


def _require_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise MediaError(f"{kind} file not found: {path} (check the path)")
    if not path.is_file():
        raise MediaError(f"{kind} path is not a file: {path} (give a path to a file)")


def _umask_mode(mode: int) -> int:
    # mkstemp/mkdtemp create 0600/0700 entries, which rename would carry to the output.
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary sibling of ``path`` (same suffix) that replaces it on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _umask_mode(0o666))
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _open_input(path: Path, kind: str, hint: str) -> Iterator[Any]:
    """Opens a container for reading, turning FFmpeg failures into MediaError."""
    _require_file(path, kind)
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise MediaError(f"cannot decode {path} as {kind}: {_one_line(e)} ({hint})") from e
    try:
        yield container
    except av.FFmpegError as e:
        raise MediaError(f"cannot decode {path} as {kind}: {_one_line(e)} ({hint})") from e
    finally:
        container.close()


def _check_frame(frame: Any, index: int, size: tuple[int, int] | None) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise MediaError(f"frames[{index}] has dtype {frame.dtype}, expected uint8 ({_TO_UINT8})")
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise MediaError(
            f"frames[{index}] has shape {frame.shape}, expected [H, W, 3] uint8 RGB (frames must be [T, H, W, 3])"
        )
    if size is not None and frame.shape[:2] != size:
        raise MediaError(
            f"frames[{index}] has size {frame.shape[:2]}, expected {size} like frames[0] (frames must share one size)"
        )
    return frame


def _iter_frames(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Validates frames lazily so a generator need not fit in memory."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise MediaError(f"frames has dtype {frames.dtype}, expected uint8 ({_TO_UINT8})")
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1:
            raise MediaError(
                f"frames has shape {frames.shape}, expected [T, H, W, 3] with T >= 1 (uint8 RGB, channels-last)"
            )
    size: tuple[int, int] | None = None
    for i, frame in enumerate(frames):
        frame = _check_frame(frame, i, size)
        size = frame.shape[:2]
        yield frame


def _check_audio(audio: Any, name: str = "audio") -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise MediaError(
            f"{name} has shape {audio.shape} dtype {audio.dtype}, expected float mono [N] (average channels)"
        )
    if not np.all(np.isfinite(audio)):
        raise MediaError(f"{name} contains NaN or inf samples (fix the upstream audio)")
    # Clipping rather than rejecting: models overshoot [-1, 1] by a hair routinely.
    return np.clip(audio.astype(np.float32), -1.0, 1.0)


def _check_metadata(metadata: Mapping[str, str] | None, name: str = "metadata") -> dict[str, str]:
    tags = dict(metadata or {})
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str) or "\0" in key + value:
            raise MediaError(f"{name} entry {key!r}: {value!r} is not a non-empty string key with a string value")
    return tags


def _fps_fraction(fps: float) -> Fraction:
    if not np.isfinite(fps) or fps <= 0:
        raise MediaError(f"fps is {fps}, expected a positive number (e.g. 25)")
    # Keeps NTSC-style rates (29.97 -> 30000/1001) exact.
    return Fraction(fps).limit_denominator(1001)


# --------------------------------------------------------------------------- video


def write_video(
    path: PathLike,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 18,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes uint8 RGB ``frames [T, H, W, 3]`` as H.264 (yuv420p), muxing float ``audio [N]`` as AAC.

    ``frames`` may also be an iterable of ``[H, W, 3]`` frames. H and W must be
    even (a yuv420p requirement). Audio is written as given, so pass
    ``T * sample_rate / fps`` samples for streams of equal length.
    ``metadata``: container tags (e.g. ``vasa_jax.provenance.Provenance.metadata()``); in
    mp4/mov, keys other than the standard ones (comment, title, ...) are kept through
    ``movflags=use_metadata_tags``.
    """
    path = Path(path)
    rate = _fps_fraction(fps)
    if not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise MediaError(
            f"crf is {crf!r}, expected an integer in [0, 51] (lower is better quality; 18 is near-lossless)"
        )
    if audio is not None:
        audio = _check_audio(audio)
        if sample_rate <= 0:
            raise MediaError(f"sample_rate is {sample_rate}, expected a positive rate in Hz (e.g. 16000)")
    tags = _check_metadata(metadata)
    options = {}
    if path.suffix.lower() in (".mp4", ".mov", ".m4v"):
        options["movflags"] = "+faststart+use_metadata_tags" if tags else "+faststart"

    with _atomic_path(path) as tmp:
        try:
            container = av.open(str(tmp), mode="w", options=options)
        except (av.FFmpegError, ValueError) as e:
            raise MediaError(f"cannot write video {path}: {_one_line(e)} (use a .mp4, .mov or .mkv path)") from e
        try:
            container.metadata.update(tags)
            _encode_video(container, path, frames, rate, audio, sample_rate, crf)
        except MediaError:
            raise
        except (av.FFmpegError, ValueError) as e:
            # PyAV raises plain ValueError too, e.g. for a container that cannot hold H.264.
            raise MediaError(f"cannot encode video {path}: {_one_line(e)} (use a .mp4, .mov or .mkv path)") from e
        finally:
            container.close()
    return path


def _encode_video(
    container: Any,
    path: Path,
    frames: np.ndarray | Iterable[np.ndarray],
    rate: Fraction,
    audio: np.ndarray | None,
    sample_rate: int,
    crf: int,
) -> None:
    vstream = None
    astream = None
    sent = 0  # audio samples already handed to the encoder
    for i, frame in enumerate(_iter_frames(frames)):
        if vstream is None:
            h, w = frame.shape[:2]
            if h % 2 or w % 2:
                raise MediaError(
                    f"frames have size {h}x{w} (HxW), H.264 yuv420p needs even H and W (crop or pad by one pixel)"
                )
            # Streams are added only once the size is known; the header is written on first mux.
            vstream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
            vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
            vstream.codec_context.time_base = 1 / rate
            if audio is not None:
                astream = container.add_stream("aac", rate=sample_rate, layout="mono")
                astream.codec_context.time_base = Fraction(1, sample_rate)
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts, vf.time_base = i, 1 / rate
        container.mux(vstream.encode(vf))
        if astream is not None:
            # Feed audio alongside video so the muxer's interleaving queue stays short.
            end = min(len(audio), int(round((i + 1) / rate * sample_rate)))
            sent = _encode_audio(container, astream, audio, sent, end, sample_rate)
    if vstream is None:
        raise MediaError(f"no frames given for {path}, expected [T, H, W, 3] with T >= 1 (check the generator)")
    container.mux(vstream.encode(None))
    if astream is not None:
        _encode_audio(container, astream, audio, sent, len(audio), sample_rate)
        # Flushing drains PyAV's frame-size FIFO, then the encoder; skipping it drops the tail.
        container.mux(astream.encode(None))


def _encode_audio(container: Any, stream: Any, audio: np.ndarray, start: int, end: int, sample_rate: int) -> int:
    if end > start:
        af = av.AudioFrame.from_ndarray(audio[None, start:end], format="fltp", layout="mono")
        af.sample_rate, af.pts, af.time_base = sample_rate, start, Fraction(1, sample_rate)
        container.mux(stream.encode(af))
    return max(start, end)


def read_video(path: PathLike, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decodes the first video stream to uint8 RGB ``[T, H, W, 3]``; returns ``(frames, fps)``."""
    path = Path(path)
    frames: list[np.ndarray] = []
    with _open_input(path, "video", _VIDEO_HINT) as container:
        if not container.streams.video:
            raise MediaError(f"{path} has no video stream ({_VIDEO_HINT})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if max_frames is None or max_frames > 0:
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    if not frames:
        if max_frames is not None and max_frames <= 0:
            raise MediaError(f"max_frames is {max_frames} for {path}, expected a positive count or None")
        raise MediaError(f"{path} contains no video frames ({_VIDEO_HINT})")
    return np.stack(frames), fps


# --------------------------------------------------------------------------- audio


def read_audio(path: PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Decodes the first audio stream to float32 mono ``[N]`` at ``sample_rate``, averaging channels."""
    path = Path(path)
    if sample_rate <= 0:
        raise MediaError(f"sample_rate is {sample_rate}, expected a positive rate in Hz (e.g. 16000)")
    chunks: list[np.ndarray] = []
    with _open_input(path, "audio", _AUDIO_HINT) as container:
        if not container.streams.audio:
            raise MediaError(f"{path} has no audio stream ({_AUDIO_HINT})")
        stream = container.streams.audio[0]
        resampler: av.AudioResampler | None = None
        key: tuple[Any, ...] | None = None
        tail_pad = 0.0  # seconds of encoder padding in the last frame

        def drain(frames: list[Any]) -> None:
            for f in frames:
                # Planar float keeps channels apart so we can average them: swresample's
                # own mono downmix scales stereo by 1/sqrt(2) per channel instead.
                chunks.append(f.to_ndarray().reshape(f.layout.nb_channels, -1).mean(axis=0))

        for frame in container.decode(stream):
            frame_key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if frame_key != key:
                # A stream may change layout or rate midway (e.g. concatenated mp3);
                # AudioResampler is fixed to its first frame, so start a new one.
                if resampler is not None:
                    drain(resampler.resample(None))
                resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=sample_rate)
                key = frame_key
            drain(resampler.resample(frame))
            tail_pad = _padding_seconds(frame)
        if resampler is not None:
            drain(resampler.resample(None))
    audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    drop = int(round(tail_pad * sample_rate))
    if 0 < drop < audio.size:
        audio = audio[:-drop]
    if audio.size == 0:
        raise MediaError(f"{path} contains no audio samples ({_AUDIO_HINT})")
    return np.clip(audio, -1.0, 1.0)


def _padding_seconds(frame: Any) -> float:
    """How much audio a decoded frame carries beyond its packet duration, in seconds.

    AAC pads its final frame to 1024 samples; mp4 records the true length as
    the last packet's duration, but the decoder still returns the full frame.
    """
    duration, time_base = getattr(frame, "duration", None), frame.time_base
    if not duration or time_base is None or not frame.sample_rate:
        return 0.0
    padding = frame.samples / frame.sample_rate - float(duration * time_base)
    return padding if padding > 0 else 0.0


def write_wav(path: PathLike, audio: np.ndarray, sample_rate: int = 16000) -> Path:
    """Writes float ``audio [N]`` in ``[-1, 1]`` as 16-bit PCM mono wav."""
    path = Path(path)
    audio = _check_audio(audio)
    if sample_rate <= 0:
        raise MediaError(f"sample_rate is {sample_rate}, expected a positive rate in Hz (e.g. 16000)")
    pcm = np.round(audio * 32767.0).astype("<i2")
    with _atomic_path(path) as tmp, wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return path


# --------------------------------------------------------------------------- images


def read_image(path: PathLike) -> np.ndarray:
    """Reads an image as uint8 RGB ``[H, W, 3]``, EXIF orientation applied, alpha composited on white."""
    path = Path(path)
    _require_file(path, "image")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"cannot decode {path} as an image: {_one_line(e)} ({_IMAGE_HINT})") from e
    return _to_rgb8(img)


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's convert("L") clips high-bit-depth values to 255 instead of rescaling.
        grey = np.asarray(img).astype(np.float64)
        grey = np.round(np.clip(grey, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        scale = 255.0 if grey.size and np.nanmax(grey) <= 1.0 else 1.0  # float images are usually [0, 1]
        grey = np.round(np.clip(np.nan_to_num(grey * scale), 0, 255)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _check_image(image: Any, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise MediaError(f"{name} has shape {image.shape} dtype {image.dtype}, expected [H, W, 3] uint8 RGB")
    return image


def write_png(path: PathLike, image: np.ndarray) -> Path:
    """Writes a uint8 RGB ``[H, W, 3]`` image as PNG."""
    path = Path(path)
    image = _check_image(image)
    with _atomic_path(path) as tmp:
        Image.fromarray(image, mode="RGB").save(tmp, format="PNG")
    return path


def write_frames_png(
    directory: PathLike, frames: np.ndarray | Iterable[np.ndarray], metadata: Mapping[str, str] | None = None
) -> list[Path]:
    """Writes ``frames [T, H, W, 3]`` as ``directory/000000.png, ...``; returns the file paths.

    ``metadata``: text chunks (tEXt) written into every frame.

    The frames are written into a temporary sibling directory that is renamed
    into place. An existing ``directory`` is replaced only if it is empty or
    holds nothing but ``NNNNNN.png`` frames (a previous output); anything else
    is refused rather than deleted.
    """
    directory = Path(directory)
    info = PngImagePlugin.PngInfo()
    for key, value in _check_metadata(metadata).items():
        info.add_text(key, value)
    if directory.exists():
        if not directory.is_dir():
            raise MediaError(f"{directory} exists and is not a directory (choose a new output directory)")
        foreign = [p.name for p in directory.iterdir() if not (p.is_file() and _FRAME_NAME.match(p.name))]
        if foreign:
            raise MediaError(
                f"{directory} already holds other files such as {foreign[0]!r} (choose a new or empty output directory)"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    old: Path | None = None
    try:
        os.chmod(tmp, _umask_mode(0o777))
        names: list[str] = []
        for i, frame in enumerate(_iter_frames(frames)):
            name = f"{i:06d}.png"
            Image.fromarray(frame, mode="RGB").save(tmp / name, format="PNG", pnginfo=info)
            names.append(name)
        if not names:
            raise MediaError(
                f"no frames given for {directory}, expected [T, H, W, 3] with T >= 1 (check the generator)"
            )
        if directory.exists():
            # Rename the previous output aside first: os.replace cannot overwrite a non-empty dir.
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".old"))
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not directory.exists():
            os.replace(old, directory)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return [directory / n for n in names]


# --------------------------------------------------------------------------- probing


def probe_duration(path: PathLike) -> dict[str, float | int | None]:
    """Stream facts from the container, without decoding.

    Returns ``video_duration`` and ``audio_duration`` in seconds, ``num_frames``,
    ``fps`` and ``sample_rate``; a key is ``None`` when that stream is absent.
    """
    path = Path(path)
    info: dict[str, float | int | None] = {
        "video_duration": None,
        "audio_duration": None,
        "num_frames": None,
        "fps": None,
        "sample_rate": None,
    }
    hint = "give a video or audio file such as mp4 or wav"
    with _open_input(path, "media", hint) as container:
        if not container.streams.video and not container.streams.audio:
            raise MediaError(f"{path} has no video or audio stream ({hint})")
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        if video is not None:
            rate = video.average_rate or video.guessed_rate or video.base_rate
            info["fps"] = float(rate) if rate else None
            info["video_duration"] = _stream_duration(video)
            info["num_frames"] = int(video.frames) if video.frames else None
        if audio is not None:
            info["sample_rate"] = int(audio.sample_rate) if audio.sample_rate else None
            info["audio_duration"] = _stream_duration(audio)
        missing = [
            s
            for s, d in ((video, info["video_duration"]), (audio, info["audio_duration"]))
            if s is not None and d is None
        ]
        if missing or (video is not None and info["num_frames"] is None):
            # Some containers (mkv, webm, raw streams) store no per-stream totals: count packets.
            _probe_packets(container, video, audio, info)
    return info


def read_metadata(path: PathLike) -> dict[str, str]:
    """The container's global tags (keys lower-cased), e.g. those ``write_video(metadata=...)`` wrote."""
    path = Path(path)
    with _open_input(path, "video", _VIDEO_HINT) as container:
        return {str(k).lower(): str(v) for k, v in container.metadata.items()}


def _stream_duration(stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _probe_packets(container: Any, video: Any, audio: Any, info: dict[str, float | int | None]) -> None:
    wanted = [s for s in (video, audio) if s is not None]
    ends: dict[int, float] = {}
    frames = 0
    for packet in container.demux(*wanted):
        if packet.size == 0 or packet.pts is None:
            continue
        end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
        ends[packet.stream.index] = max(ends.get(packet.stream.index, 0.0), end)
        if video is not None and packet.stream.index == video.index:
            frames += 1
    if video is not None:
        if info["video_duration"] is None and video.index in ends:
            start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
            info["video_duration"] = ends[video.index] - start
        if info["num_frames"] is None:
            info["num_frames"] = frames
    if audio is not None and info["audio_duration"] is None and audio.index in ends:
        start = float(audio.start_time * audio.time_base) if audio.start_time is not None else 0.0
        info["audio_duration"] = ends[audio.index] - start
