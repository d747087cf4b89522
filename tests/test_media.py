"""Tests for vasa_jax.data.media on real files written to tmp_path (no mocks)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from vasa_jax.data import media
from vasa_jax.data.media import MediaError

SR = 16000
FPS = 25


# --------------------------------------------------------------------------- helpers


def smooth_frames(t: int = 25, h: int = 64, w: int = 64) -> np.ndarray:
    """Gradients plus a moving square: compressible, so H.264 error stays small."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, ..., 0] = xx * 255 // (w - 1)
        frames[i, ..., 1] = yy * 255 // (h - 1)
        frames[i, ..., 2] = (xx + yy + 4 * i) % 256 // 2 + 64
        frames[i, 16:32, 4 + i : 20 + i] = (230, 40, 40)
    return frames


def sine(freq: float, n: int, rate: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


def tone_amplitude(audio: np.ndarray, rate: int, freq: float) -> float:
    """Amplitude of one sinusoid by projection (exact for whole-cycle windows)."""
    t = np.arange(len(audio)) / rate
    c = np.cos(2 * np.pi * freq * t) @ audio
    s = np.sin(2 * np.pi * freq * t) @ audio
    return float(2 * np.hypot(c, s) / len(audio))


def write_wav_stdlib(path: Path, channels: np.ndarray, rate: int) -> None:
    """channels: float [C, N] in [-1, 1], written as interleaved 16-bit PCM."""
    pcm = np.round(channels.T * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def encode_audio_pyav(path: Path, codec: str, channels: np.ndarray, rate: int) -> None:
    """Encodes float [C, N] audio with PyAV into whatever container path's suffix names."""
    layout = "stereo" if channels.shape[0] == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels, np.float32), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def expect_media_error(fn, *needles: str) -> str:
    with pytest.raises(MediaError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def dir_names(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()}


# --------------------------------------------------------------------------- video


def test_video_roundtrip_with_audio(tmp_path):
    frames = smooth_frames()
    n = len(frames) * SR // FPS  # 640 samples per frame
    audio = sine(440.0, n, SR)
    out = tmp_path / "clip.mp4"

    assert media.write_video(out, frames, fps=FPS, audio=audio, sample_rate=SR) == out
    assert dir_names(tmp_path) == {"clip.mp4"}
    # The temp file's private 0600 mode must not leak into the output.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask

    decoded, fps = media.read_video(out)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == pytest.approx(FPS)
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 6

    back = media.read_audio(out, sample_rate=SR)
    assert back.dtype == np.float32 and back.ndim == 1
    assert abs(len(back) - n) <= SR // FPS
    assert peak_hz(back, SR) == pytest.approx(440.0, abs=5)
    assert tone_amplitude(back[1000:-1000], SR, 440.0) == pytest.approx(0.5, abs=0.05)

    info = media.probe_duration(out)
    assert info["num_frames"] == len(frames)
    assert info["fps"] == pytest.approx(FPS)
    assert info["sample_rate"] == SR
    assert info["video_duration"] == pytest.approx(1.0, abs=1 / FPS)
    assert info["audio_duration"] == pytest.approx(info["video_duration"], abs=1 / FPS)

    if shutil.which("ffprobe") is None:
        pytest.skip("ffprobe not installed: codec names unchecked")
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,pix_fmt,duration",
            "-of",
            "json",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    streams = {s["codec_type"]: s for s in json.loads(probe.stdout)["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac"
    assert float(streams["audio"]["duration"]) == pytest.approx(float(streams["video"]["duration"]), abs=1 / FPS)


def test_video_from_generator_without_audio(tmp_path):
    frames = smooth_frames(t=6, h=32, w=48)
    out = tmp_path / "sub" / "gen.mp4"  # parent is created on demand
    media.write_video(out, (f for f in frames), fps=30)

    decoded, fps = media.read_video(out, max_frames=4)
    assert decoded.shape == (4, 32, 48, 3)
    assert fps == pytest.approx(30)
    assert np.abs(decoded.astype(np.int16) - frames[:4]).mean() < 6

    info = media.probe_duration(out)
    assert info["num_frames"] == 6
    assert info["audio_duration"] is None and info["sample_rate"] is None
    with pytest.raises(MediaError, match="no audio stream"):
        media.read_audio(out)


def test_write_video_overwrites_existing_file(tmp_path):
    out = tmp_path / "v.mp4"
    media.write_video(out, smooth_frames(t=3, h=16, w=16))
    media.write_video(out, smooth_frames(t=5, h=16, w=16))
    assert media.read_video(out)[0].shape[0] == 5
    assert dir_names(tmp_path) == {"v.mp4"}


# --------------------------------------------------------------------------- audio


def test_read_audio_resamples_and_averages_44k_stereo_wav(tmp_path):
    rate, n = 44100, 44100
    left, right = sine(440.0, n, rate, amp=0.6), sine(1000.0, n, rate, amp=0.3)
    path = tmp_path / "stereo.wav"
    write_wav_stdlib(path, np.stack([left, right]), rate)

    mono = media.read_audio(path, sample_rate=SR)
    assert mono.dtype == np.float32 and mono.shape == (SR,)
    # Averaging halves each channel's tone; swresample's default downmix would give x0.707.
    assert tone_amplitude(mono, SR, 440.0) == pytest.approx(0.3, abs=0.01)
    assert tone_amplitude(mono, SR, 1000.0) == pytest.approx(0.15, abs=0.01)
    assert tone_amplitude(mono, SR, 700.0) < 0.01


def test_read_audio_other_rate(tmp_path):
    path = tmp_path / "mono.wav"
    write_wav_stdlib(path, sine(300.0, 16000, 16000)[None], 16000)
    out = media.read_audio(path, sample_rate=24000)
    assert abs(len(out) - 24000) <= 1
    assert peak_hz(out, 24000) == pytest.approx(300.0, abs=3)


@pytest.mark.parametrize(
    ("suffix", "codec", "rate", "tolerance_s"),
    [
        ("flac", "flac", 48000, 0.0),
        ("mp3", "libmp3lame", 22050, 0.1),  # encoder delay/padding not always removed
        ("m4a", "aac", 48000, 0.1),
    ],
)
def test_read_audio_compressed_formats(tmp_path, suffix, codec, rate, tolerance_s):
    n = rate  # one second
    path = tmp_path / f"tone.{suffix}"
    encode_audio_pyav(path, codec, np.stack([sine(523.0, n, rate), sine(523.0, n, rate)]), rate)

    out = media.read_audio(path, sample_rate=SR)
    assert abs(len(out) - SR) <= tolerance_s * SR + 1
    assert peak_hz(out, SR) == pytest.approx(523.0, abs=5)
    assert np.sqrt(np.mean(out**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.15)


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_read_audio_flac_from_sox(tmp_path):
    path = tmp_path / "sox.flac"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "2", str(path), "synth", "1.5", "sine", "300"], check=True)
    out = media.read_audio(path, sample_rate=SR)
    assert abs(len(out) - 24000) <= 1
    assert peak_hz(out, SR) == pytest.approx(300.0, abs=3)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_read_audio_real_speech(tmp_path):
    path = tmp_path / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "hello world"], check=True, capture_output=True)
    speech = media.read_audio(path, sample_rate=SR)
    assert 0.5 * SR <= len(speech) <= 3.0 * SR
    assert np.sqrt(np.mean(speech**2)) > 0.01
    assert np.abs(speech).max() <= 1.0


def test_write_wav_roundtrip(tmp_path):
    audio = sine(440.0, 8000, SR, amp=0.9)
    audio[:10] = 1.5  # out-of-range samples are clipped, not wrapped
    path = media.write_wav(tmp_path / "a.wav", audio)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, SR, 8000)
    back = media.read_audio(path, sample_rate=SR)
    assert back.shape == audio.shape
    np.testing.assert_allclose(back, np.clip(audio, -1, 1), atol=1e-4)
    assert media.probe_duration(path)["audio_duration"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("reader", "name"),
    [
        (media.read_audio, "nope.wav"),
        (media.read_video, "nope.mp4"),
        (media.read_image, "nope.png"),
        (media.probe_duration, "nope.mp4"),
    ],
)
def test_missing_files_raise(tmp_path, reader, name):
    missing = tmp_path / name
    expect_media_error(lambda: reader(missing), "not found", str(missing))


def test_text_files_with_media_suffixes_raise(tmp_path):
    for name in ("fake.wav", "fake.png", "fake.mp4"):
        (tmp_path / name).write_text("this is not media\nsecond line\n")
    expect_media_error(lambda: media.read_audio(tmp_path / "fake.wav"), "fake.wav", "cannot decode")
    expect_media_error(lambda: media.read_image(tmp_path / "fake.png"), "fake.png", "cannot decode", "as an image")
    expect_media_error(lambda: media.read_video(tmp_path / "fake.mp4"), "fake.mp4", "cannot decode")


def test_read_audio_of_silent_video_and_read_video_of_wav(tmp_path):
    video = media.write_video(tmp_path / "silent.mp4", smooth_frames(t=2, h=16, w=16))
    expect_media_error(lambda: media.read_audio(video), "silent.mp4", "no audio stream")
    wav = tmp_path / "a.wav"
    write_wav_stdlib(wav, sine(440, 1600, SR)[None], SR)
    expect_media_error(lambda: media.read_video(wav), "a.wav", "no video stream")


def test_read_audio_of_empty_wav(tmp_path):
    path = tmp_path / "empty.wav"
    write_wav_stdlib(path, np.zeros((1, 0), np.float32), SR)
    expect_media_error(lambda: media.read_audio(path), "empty.wav", "no audio samples")


@pytest.mark.parametrize(
    ("frames", "needles"),
    [
        (np.zeros((2, 16, 16, 3), np.float32), ("frames", "uint8")),
        (np.zeros((2, 16, 16), np.uint8), ("frames", "[T, H, W, 3]")),
        (np.zeros((2, 16, 16, 4), np.uint8), ("frames", "[T, H, W, 3]")),
        (np.zeros((0, 16, 16, 3), np.uint8), ("frames", "T >= 1")),
        (np.zeros((2, 15, 16, 3), np.uint8), ("15x16", "even")),
        ([], ("no frames", "out.mp4")),
    ],
)
def test_write_video_rejects_bad_frames(tmp_path, frames, needles):
    expect_media_error(lambda: media.write_video(tmp_path / "out.mp4", frames), *needles)
    assert dir_names(tmp_path) == set()


def test_write_video_failing_midway_leaves_nothing(tmp_path):
    good = smooth_frames(t=2, h=16, w=16)
    frames = [good[0], good[1], np.zeros((16, 18, 3), np.uint8)]
    out = tmp_path / "out.mp4"
    expect_media_error(
        lambda: media.write_video(out, frames, audio=np.zeros(1920, np.float32)), "frames[2]", "(16, 18)"
    )
    assert dir_names(tmp_path) == set()

    # A failed rewrite keeps the previous output intact.
    media.write_video(out, good)
    before = out.read_bytes()
    expect_media_error(lambda: media.write_video(out, frames), "frames[2]")
    assert out.read_bytes() == before
    assert dir_names(tmp_path) == {"out.mp4"}


def test_write_video_rejects_bad_settings(tmp_path):
    frames = smooth_frames(t=2, h=16, w=16)
    expect_media_error(lambda: media.write_video(tmp_path / "o.webm", frames), "o.webm", "libx264")
    expect_media_error(lambda: media.write_video(tmp_path / "o.txt", frames), "o.txt", ".mp4")
    expect_media_error(lambda: media.write_video(tmp_path / "o.mp4", frames, crf=99), "crf")
    expect_media_error(lambda: media.write_video(tmp_path / "o.mp4", frames, fps=0), "fps")
    assert dir_names(tmp_path) == set()


def test_write_video_rejects_bad_audio(tmp_path):
    frames = smooth_frames(t=2, h=16, w=16)
    expect_media_error(
        lambda: media.write_video(tmp_path / "o.mp4", frames, audio=np.zeros((1280, 2), np.float32)), "audio", "mono"
    )
    expect_media_error(
        lambda: media.write_video(tmp_path / "o.mp4", frames, audio=np.full(1280, np.nan, np.float32)), "audio", "NaN"
    )
    assert dir_names(tmp_path) == set()


# --------------------------------------------------------------------------- images


def test_read_image_rgba_composites_on_white(tmp_path):
    rgba = np.zeros((8, 10, 4), np.uint8)
    rgba[..., :3] = (200, 20, 60)
    rgba[:, :3, 3] = 0  # transparent
    rgba[:, 3:6, 3] = 128  # half
    rgba[:, 6:, 3] = 255  # opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")

    img = media.read_image(tmp_path / "a.png")
    assert img.shape == (8, 10, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(img[0, 7], (200, 20, 60))
    np.testing.assert_allclose(img[0, 4], (228, 137, 157), atol=2)


def test_read_image_greyscale_and_palette(tmp_path):
    grey = np.arange(0, 240, 4, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    img = media.read_image(tmp_path / "g.png")
    assert img.shape == (6, 10, 3)
    np.testing.assert_array_equal(img, np.repeat(grey[..., None], 3, axis=2))

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (10, 200, 30)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    np.testing.assert_array_equal(media.read_image(tmp_path / "p.png"), rgb)


def test_read_image_16bit_greyscale(tmp_path):
    grey16 = np.array([[0, 257 * 100, 65535, 32896]], np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as stored:
        assert stored.mode.startswith("I")  # really stored as 16-bit
    img = media.read_image(tmp_path / "g16.png")
    assert img.dtype == np.uint8 and img.shape == (1, 4, 3)
    np.testing.assert_array_equal(img[0, :, 0], (0, 100, 255, 128))


def test_read_image_applies_exif_orientation(tmp_path):
    stored = np.full((24, 40, 3), 255, np.uint8)
    stored[:8, :8] = (255, 0, 0)  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)

    img = media.read_image(tmp_path / "rot.jpg")
    assert img.shape == (40, 24, 3)
    # Clockwise rotation carries the top-left corner to the top-right.
    assert img[:6, -6:, 0].mean() > 200 and img[:6, -6:, 1].mean() < 60
    assert img[:6, :6].min() > 200


def test_write_png_roundtrip_and_validation(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    path = media.write_png(tmp_path / "x.png", image)
    np.testing.assert_array_equal(media.read_image(path), image)
    expect_media_error(lambda: media.write_png(tmp_path / "y.png", image.astype(np.float32)), "image", "[H, W, 3]")
    assert dir_names(tmp_path) == {"x.png"}


def test_write_frames_png_roundtrip(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (4, 6, 8, 3), dtype=np.uint8)
    out = tmp_path / "frames"
    paths = media.write_frames_png(out, frames)
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png", "000003.png"]
    np.testing.assert_array_equal(np.stack([media.read_image(p) for p in paths]), frames)

    # Rewriting replaces a previous output wholesale (no stale 000003.png).
    media.write_frames_png(out, frames[:2])
    assert dir_names(out) == {"000000.png", "000001.png"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert dir_names(tmp_path) == {"frames"}


def test_write_frames_png_failure_and_foreign_directory(tmp_path):
    good = np.zeros((2, 4, 4, 3), np.uint8)
    out = tmp_path / "frames"
    expect_media_error(lambda: media.write_frames_png(out, [good[0], good[1], np.zeros((4, 4), np.uint8)]), "frames[2]")
    assert dir_names(tmp_path) == set()

    media.write_frames_png(out, good)
    expect_media_error(lambda: media.write_frames_png(out, [good[0], np.zeros((5, 4, 3), np.uint8)]), "frames[1]")
    assert dir_names(out) == {"000000.png", "000001.png"}  # previous output kept
    assert dir_names(tmp_path) == {"frames"}

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    expect_media_error(lambda: media.write_frames_png(other, good), "notes.txt", str(other))
    assert (other / "notes.txt").read_text() == "keep me"


def test_media_imports_no_heavy_modules():
    code = (
        "import sys, vasa_jax.data.media; "
        "bad = [m for m in ('jax', 'scipy', 'grain', 'tensorflow_datasets', 'tensorflow') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, "vasa_jax.data.media must import only numpy/av/PIL/stdlib"
