"""Provenance labels (vasa_jax.provenance): the watermark survives re-encoding at CRF 28, half
size, a 10% crop, brightness/contrast and a 2-second cut, stays invisible (PSNR ≥ 40 dB),
is absent from unmarked videos; container metadata round-trips; `vasa-jax verify` exit
codes; the generator labels its output by default and records --no-watermark.

Transforms are made here with PyAV + numpy (no ffmpeg command needed); the statistics over
many clips (detection and false-alarm rates) are in benchmarks/provenance.py."""
from __future__ import annotations

import gc
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import vasa_jax
from vasa_jax import provenance as P
from vasa_jax.data import media
from vasa_jax.data.synthtalk import generate_clip
from vasa_jax.inference import generate as G

CKPT = "3fa2c19e" + "0" * 56
PAYLOAD = P.Payload.for_checkpoint(CKPT)


# ----------------------------------------------------------------------------------------------
# Clips and transforms.


def _natural(t: int, size: int, seed: int) -> np.ndarray:
    """Real-looking footage stand-in: a 1/f-spectrum colour texture (the statistics of natural
    images) under a slow pan, with a bright moving disc. uint8 [T, size, size, 3]."""
    rng = np.random.default_rng(seed)
    n = size + 2 * t
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    f[0, 0] = 1.0
    layers = [np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) / f)) for _ in range(3)]
    world = np.stack(layers, -1)
    world = (world - world.mean()) / world.std() * 45 + 120
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for i in range(t):
        frame = world[i:i + size, 2 * i:2 * i + size].copy()
        disc = (yy - size / 2) ** 2 + (xx - size / 3 - i) ** 2 < (size / 6) ** 2
        frame[disc] = (220, 180, 150)
        frames.append(frame)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _resize(frames: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])


def _transform(name: str, frames: np.ndarray) -> tuple[np.ndarray, int]:
    """The decoded marked clip → (transformed frames, CRF for re-encoding them)."""
    t, h, w, _ = frames.shape
    if name == "crf28":
        return frames, 28
    if name == "half":
        return _resize(frames, w // 2, h // 2), 23
    if name == "crop10":   # 10% off each side's length, at an odd offset
        ch, cw = int(h * 0.9) // 2 * 2, int(w * 0.9) // 2 * 2
        return np.ascontiguousarray(frames[:, 7:7 + ch, 11:11 + cw]), 23
    if name == "brightness_contrast":
        return np.clip(frames * 1.3 - 10.0, 0, 255).astype(np.uint8), 23
    if name == "cut2s":    # any 2-second piece: here frames 9..58 of 60
        return frames[9:9 + 50], 23
    raise ValueError(name)


TRANSFORMS = ["crf28", "half", "crop10", "brightness_contrast", "cut2s"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("prov")
    clean = generate_clip(identity=5, seed=1, num_frames=60, resolution=256).frames
    label = P.Provenance(checkpoint_hash=CKPT)
    marked = np.stack(list(label.mark(clean)))
    out = dict(dir=d, clean=clean, marked=marked)
    out["marked_mp4"] = media.write_video(d / "marked.mp4", marked, metadata=label.metadata())
    out["clean_mp4"] = media.write_video(d / "clean.mp4", clean)
    return out


# ----------------------------------------------------------------------------------------------
# Payload and embedding.


def test_payload_bytes_and_crc():
    raw = PAYLOAD.to_bytes()
    assert raw[:4] == bytes.fromhex("a13fa2c1") and len(raw) * 8 == P.PAYLOAD_BITS
    assert P.Payload.from_bytes(raw) == (PAYLOAD, True)
    value = int.from_bytes(raw, "big")
    for bit in range(P.PAYLOAD_BITS):    # CRC-8 catches every single-bit error
        flipped = (value ^ (1 << bit)).to_bytes(5, "big")
        assert P.Payload.from_bytes(flipped)[1] is False
    assert P.Payload.for_checkpoint(None).hash_prefix == "000000"
    assert P.Payload.for_checkpoint("not-hex").hash_prefix == "000000"


@pytest.mark.parametrize("size", [(256, 256), (190, 250), (64, 64)])
def test_invisible_luma_only(size):
    """PSNR ≥ 40 dB on clean renders of several sizes; R, G and B move by the same amount."""
    h, w = size
    clean = _natural(4, max(h, w), seed=3)[:, :h, :w]
    marked = P.Watermarker(PAYLOAD)(clean)
    assert marked.shape == clean.shape and marked.dtype == np.uint8
    assert 40.0 <= P.psnr(marked, clean) < 45.0
    diff = marked.astype(int) - clean
    inside = (marked > 0).all(-1) & (marked < 255).all(-1)    # not saturated
    assert np.abs(diff).max() > 0
    np.testing.assert_array_equal(diff[..., 0][inside], diff[..., 1][inside])
    np.testing.assert_array_equal(diff[..., 2][inside], diff[..., 1][inside])


def test_watermark_frames_inside_jit_matches_writer():
    frames = _natural(3, 128, seed=4)
    tile = P.tile_for(PAYLOAD)

    @jax.jit
    def render_and_mark(x):   # stands in for a jitted render function
        return P.watermark_frames(x, tile)

    np.testing.assert_array_equal(np.asarray(render_and_mark(jnp.asarray(frames))),
                                  P.Watermarker(PAYLOAD)(frames))


def test_payloads_differ():
    other = P.Payload.for_checkpoint("ffffff")
    assert np.abs(P.tile_for(PAYLOAD) - P.tile_for(other)).mean() > 0.1
    d = P.detect(P.Watermarker(other)(_natural(20, 256, seed=5)))
    assert d.detected and d.payload == other and d.payload_valid


# ----------------------------------------------------------------------------------------------
# Robustness and false alarms.


def test_marked_clip_detected(clips):
    d = P.detect_file(clips["marked_mp4"])
    assert d.detected and d.score >= d.threshold
    assert d.payload == PAYLOAD and d.payload_valid
    assert d.scale == 1.0 and d.shift == (0, 0) and d.frames == 60
    assert d.false_alarm < 1e-6


@pytest.mark.parametrize("name", TRANSFORMS)
def test_detected_after_transform(name, clips):
    decoded, _ = media.read_video(clips["marked_mp4"])
    frames, crf = _transform(name, decoded)
    path = media.write_video(clips["dir"] / f"{name}.mp4", frames, crf=crf)
    d = P.detect_file(path)
    assert d.detected, (name, d.score)
    assert d.payload == PAYLOAD and d.payload_valid, name
    assert d.scale == (0.5 if name == "half" else 1.0)
    if name == "crop10":   # the crop shows up as a cyclic shift of the tile
        assert d.shift == (P.TILE - 7, P.TILE - 11)


def test_unmarked_not_detected(clips, tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (25, 192, 256, 3), dtype=np.uint8)
    videos = {
        "synthtalk": clips["clean_mp4"],
        "synthtalk_half": media.write_video(tmp_path / "h.mp4", _resize(clips["clean"], 128, 128)),
        "natural": media.write_video(tmp_path / "n.mp4", _natural(30, 256, seed=6)),
        "noise": media.write_video(tmp_path / "z.mp4", noise),
    }
    for name, path in videos.items():
        d = P.detect_file(path)
        assert not d.detected, (name, d.score)
        assert d.score < d.threshold - 1.0, (name, d.score)


def test_null_scores_are_standard_normal_per_shift():
    """Without a watermark each shift's correlation is ≈ N(0, 1): the basis of the threshold."""
    rng = np.random.default_rng(1)
    surface = P._surface(P._whiten(P._fold(P._highpass(rng.normal(128, 30, (512, 512)), 1.0),
                                           1.0)), P._carriers().sync)
    assert abs(surface.mean()) < 0.1 and 0.9 < surface.std() < 1.1


# ----------------------------------------------------------------------------------------------
# Metadata.


def test_metadata_round_trip(clips, tmp_path):
    tags = media.read_metadata(clips["marked_mp4"])
    assert tags["ai_generated"] == "true" and tags["vasa_jax_watermark"] == "on"
    meta = P.parse_metadata(tags)
    assert meta["tool"] == "vasa_jax" and meta["checkpoint"] == CKPT
    assert meta["version"] == vasa_jax.__version__ and meta["kind"] == "model output"
    assert meta["payload"] == PAYLOAD.to_bytes().hex()
    assert meta["created"].endswith("Z") and tags["creation_time"] == meta["created"]
    # ffmpeg re-encodes keep only standard tags: the comment alone still identifies us.
    only_comment = P.parse_metadata({"comment": tags["comment"]})
    assert only_comment["checkpoint"] == CKPT and only_comment["watermark"] == "on"
    assert P.parse_metadata(media.read_metadata(clips["clean_mp4"])) is None
    # Matroska and PNG frames carry the same tags.
    label = P.Provenance(kind=P.KIND_SYNTHTALK, watermark=False)
    mkv = media.write_video(tmp_path / "x.mkv", clips["clean"][:5], metadata=label.metadata())
    meta = P.parse_metadata(media.read_metadata(mkv))
    assert meta["kind"] == "SynthTalk render" and meta["watermark"] == "off"
    pngs = media.write_frames_png(tmp_path / "frames", clips["clean"][:2],
                                  metadata=label.metadata())
    with Image.open(pngs[0]) as im:
        assert P.parse_metadata(im.text)["watermark"] == "off"


def test_label_file_marks_once(clips, tmp_path):
    path = media.write_video(tmp_path / "p.mp4", clips["clean"][:30])
    label = P.Provenance(kind=P.KIND_SYNTHTALK)
    P.label_file(path, label)
    first = path.read_bytes()
    d = P.detect_file(path)
    assert d.detected and d.payload == label.payload
    P.label_file(path, label)     # already labelled: left as it is
    assert path.read_bytes() == first


# ----------------------------------------------------------------------------------------------
# vasa-jax verify.


def _cli(args, capsys):
    """Runs the CLI in-process → (rc, stdout, stderr) of this call only (see test_generate)."""
    from vasa_jax import cli

    gc.collect()
    capsys.readouterr()
    gc.disable()
    try:
        rc = cli.main([*map(str, args)])
    finally:
        gc.enable()
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_verify_exit_codes(clips, tmp_path, capsys):
    rc, out, err = _cli(["verify", clips["marked_mp4"]], capsys)
    assert rc == 0, err
    assert "metadata:  found" in out and "watermark: detected" in out
    assert "3fa2c1" in out and "CRC ok" in out
    rc, out, _ = _cli(["verify", clips["clean_mp4"]], capsys)
    assert rc == 1 and "not found" in out and "not detected" in out
    rc, out, _ = _cli(["verify", "--json", clips["marked_mp4"]], capsys)
    report = json.loads(out)
    assert rc == 0 and report["metadata_found"] and report["watermark"]["detected"]
    assert report["watermark"]["payload"]["hash_prefix"] == "3fa2c1"
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    for bad, match in [(tmp_path / "missing.mp4", "not found"),
                       (tmp_path / "corrupt.mp4", "cannot decode")]:
        rc, out, err = _cli(["verify", bad], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and not out and len(lines) == 1, err
        assert lines[0].startswith("vasa-jax verify: error:") and match in lines[0]
    tiny = media.write_video(tmp_path / "tiny.mp4", clips["clean"][:3, :16, :16])
    rc, _, err = _cli(["verify", tiny], capsys)
    assert rc == 2 and "too small" in err
    rc, _, err = _cli(["verify", "--scales", "0", clips["marked_mp4"]], capsys)
    assert rc == 2 and "--scales" in err


# ----------------------------------------------------------------------------------------------
# The generator labels what it writes.


@pytest.fixture(scope="module")
def gen_frames(bundle_dir):
    gen = G.Generator.from_bundle(bundle_dir)
    rng = np.random.default_rng(0)
    gen.prepare((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    t = np.arange(16000) / 16000
    res = gen.generate((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), G.Controls(seed=0))
    return gen, res


def test_generator_marks_by_default(gen_frames, tmp_path):
    gen, res = gen_frames
    ckpt = gen.bundle.checkpoint_hash
    expected = P.Watermarker(P.Payload.for_checkpoint(ckpt))(res.frames)
    pngs = sorted((gen.write(res.frames, None, tmp_path / "on", png=True)).iterdir())
    got = np.stack([np.asarray(Image.open(p)) for p in pngs])
    np.testing.assert_array_equal(got, expected)        # exactly the watermark, by default
    assert not np.array_equal(got, res.frames)
    with Image.open(pngs[0]) as im:
        assert P.parse_metadata(im.text)["checkpoint"] == ckpt
    pngs = sorted((gen.write(res.frames, None, tmp_path / "off", png=True,
                             watermark=False)).iterdir())
    np.testing.assert_array_equal(np.stack([np.asarray(Image.open(p)) for p in pngs]),
                                  res.frames)
    mp4 = gen.write(res.frames, res.audio, tmp_path / "on.mp4")
    meta = P.parse_metadata(media.read_metadata(mp4))
    assert meta["watermark"] == "on" and meta["checkpoint"] == ckpt
    assert meta["payload"] == P.Payload.for_checkpoint(ckpt).to_bytes().hex()


def test_cli_no_watermark_recorded(gen_frames, bundle_dir, tmp_path, capsys, monkeypatch):
    """`generate --no-watermark`: frames unmarked, metadata says watermark off; verify exits 1
    on the watermark while still reporting the metadata. (The shared, already compiled
    generator stands in for from_bundle, as in test_generate.)"""
    gen, _ = gen_frames
    monkeypatch.setattr(G.Generator, "from_bundle", classmethod(lambda cls, path, **kw: gen))
    wav = tmp_path / "s.wav"
    t = np.arange(12800) / 16000
    media.write_wav(wav, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32))
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "face.png")
    common = ["generate", "--checkpoint", bundle_dir, "--image", tmp_path / "face.png",
              "--audio", wav, "--no-progress"]
    rc, out, err = _cli([*common, "--out", tmp_path / "off.mp4", "--no-watermark"], capsys)
    assert rc == 0 and "watermark off" in out, err
    meta = P.parse_metadata(media.read_metadata(tmp_path / "off.mp4"))
    assert meta["watermark"] == "off" and meta["payload"] == "none"
    rc, out, err = _cli([*common, "--out", tmp_path / "frames", "--frames-dir", "--no-watermark"],
                        capsys)
    assert rc == 0, err
    frames_off = np.stack([np.asarray(Image.open(p))
                           for p in sorted((tmp_path / "frames").iterdir())])
    rc, out, err = _cli([*common, "--out", tmp_path / "frames_on", "--frames-dir"], capsys)
    assert rc == 0 and "watermark on" in out, err
    frames_on = np.stack([np.asarray(Image.open(p))
                          for p in sorted((tmp_path / "frames_on").iterdir())])
    np.testing.assert_array_equal(frames_on, P.Watermarker(
        P.Payload.for_checkpoint(gen.bundle.checkpoint_hash))(frames_off))
    rc, out, _ = _cli(["verify", tmp_path / "off.mp4"], capsys)
    assert rc == 1 and "watermark off" in out and "not detected" in out


def test_preview_is_labelled(tmp_path, capsys):
    rc, out, err = _cli(["preview", "--out", tmp_path / "p.mp4", "--seconds", "2",
                         "--resolution", "256"], capsys)
    assert rc == 0, err
    report = P.verify(tmp_path / "p.mp4")
    assert report.detected and report.detection.payload.kind == P.KIND_SYNTHTALK
    assert report.metadata["kind"] == "SynthTalk render" and report.metadata["checkpoint"] == "none"
