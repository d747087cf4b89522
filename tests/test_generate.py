"""Generation from a bundle: portrait preparation, offline and streaming generation, controls,
head-pose following, reenactment, static shapes (one compile), writers and the CLI."""
import dataclasses
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vasa_jax.data import media
from vasa_jax.errors import ConfigError
from vasa_jax.inference import generate as G

import vasa_jax  # noqa: E402

ROOT = Path(vasa_jax.__file__).resolve().parent.parent
SPF = G.SAMPLES_PER_FRAME


# ----------------------------------------------------------------------------------------------
# Real input files.


def _face(size=(96, 80), seed=0) -> np.ndarray:
    """A face-like RGB test card: skin disc, eyes, mouth on a textured background."""
    h, w = size
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 60 + 40).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = h / 2, w / 2, min(h, w) * 0.35
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (224, 172, 140)
    for ex in (cx - r / 2.5, cx + r / 2.5):
        img[(yy - (cy - r / 3)) ** 2 + (xx - ex) ** 2 < (r / 8) ** 2] = (30, 30, 40)
    img[(np.abs(yy - (cy + r / 2)) < r / 12) & (np.abs(xx - cx) < r / 3)] = (150, 40, 50)
    return img.astype(np.uint8)


def _encode_audio(path, wav16k, codec, rate, layout="stereo"):
    """Writes mono 16 kHz audio as `codec` at `rate` Hz (resampled, duplicated to stereo)."""
    import av

    n = int(round(len(wav16k) * rate / 16000))
    x = np.interp(np.arange(n) * 16000 / rate, np.arange(len(wav16k)), wav16k).astype(np.float32)
    data = np.stack([x, x]) if layout == "stereo" else x[None]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, layout=layout)
        fs = s.codec_context.frame_size or 1024
        for i in range(0, n, fs):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i:i + fs]), format="fltp",
                                           layout=layout)
            f.sample_rate, f.pts, f.time_base = rate, i, Fraction(1, rate)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen_inputs")
    from PIL import Image

    out = {}
    Image.fromarray(_face()).save(d / "face.png")
    out["png"] = d / "face.png"
    speech = d / "speech.wav"
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(speech), "Hello, this is a talking face test."],
                       check=True, capture_output=True)
    else:  # CI installs espeak-ng; a syllable-modulated tone stands in elsewhere
        t = np.arange(int(2.3 * 16000)) / 16000
        env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
        media.write_wav(speech, (0.3 * env * np.sin(2 * np.pi * 180 * t)).astype(np.float32))
    out["wav"] = speech
    out["speech"] = media.read_audio(speech)   # espeak writes 22.05 kHz: resampled to 16 kHz
    out["mp3"] = _encode_audio(d / "speech.mp3", out["speech"], "mp3", 44100)
    out["m4a"] = _encode_audio(d / "speech.m4a", out["speech"], "aac", 48000)
    out["dir"] = d
    return out


@pytest.fixture(scope="module")
def gen(bundle_dir, files):
    g = G.Generator.from_bundle(bundle_dir)
    g.prepare(files["png"])
    return g


# ----------------------------------------------------------------------------------------------
# Portrait preparation.


def test_prepare_image_kinds(gen, files, tmp_path):
    from PIL import Image

    s = gen.image_size
    face = _face((90, 120))
    # RGBA PNG (alpha composited on white), grey PNG, WebP, plain array: all give [S, S, 3].
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(face).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(face).save(tmp_path / "face.webp", quality=95)
    for image in (tmp_path / "rgba.png", tmp_path / "grey.png", tmp_path / "face.webp", face):
        src = gen.prepare(image)
        assert src.image.shape == (s, s, 3) and src.image.dtype == np.uint8
        assert src.box == (15, 0, 105, 90)   # centre square of a 120×90 image
        assert src.latents["v_app"].shape[0] == 1 and src.latents["z_pose"].shape == (1, 7)
    # EXIF orientation 6 (display = stored rotated 90° clockwise): stored top red / bottom blue
    # shows as left blue / right red.
    stored = np.zeros((128, 64, 3), np.uint8)
    stored[:64] = (220, 20, 20)
    stored[64:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    src = gen.prepare(tmp_path / "rot.jpg")
    assert src.box == (32, 0, 96, 64)
    left, right = src.image[:, :20].mean((0, 1)), src.image[:, -20:].mean((0, 1))
    assert left[2] > 150 > left[0] and right[0] > 150 > right[2]
    # A user box (squared about its centre), and a pluggable detector.
    big = _face((200, 300))
    assert gen.prepare(big, box=(100, 50, 180, 150)).box == (90, 50, 190, 150)
    calls = []
    det = G.Generator(gen.bundle, detector=lambda im: calls.append(im.shape) or (0, 0, 70, 70))
    det._encode = gen._encode   # share the compiled encoder (same model)
    assert det.prepare(big).box == (0, 0, 70, 70) and calls == [(200, 300, 3)]
    det.detector = lambda im: None
    with pytest.raises(ConfigError, match="no face found"):
        det.prepare(big)
    # Smaller than the model input: one line naming the size and the fix.
    with pytest.raises(ConfigError, match=r"60x50, smaller than the model input 64x64"):
        gen.prepare(_face((50, 60)))
    with pytest.raises(ConfigError, match="face crop 40x40"):
        gen.prepare(big, box=(10, 10, 50, 50))
    gen.prepare(files["png"])   # restore the shared portrait


# ----------------------------------------------------------------------------------------------
# Offline generation, writers, streaming, compiles.


def test_generate_writes_mp4_and_png(gen, files, tmp_path):
    wav = files["speech"]
    res = gen.generate(files["wav"], G.Controls(seed=0))
    t = len(wav) // SPF
    assert res.frames.shape == (t, 64, 64, 3) and res.frames.dtype == np.uint8
    assert res.motion.shape == (t, gen.motion_dim) and np.all(np.isfinite(res.motion))
    np.testing.assert_array_equal(res.audio, wav)
    out = gen.write(res.frames, res.audio, tmp_path / "out.mp4")
    facts = media.probe_duration(out)
    assert facts["fps"] == 25 and facts["num_frames"] == t
    assert abs(facts["video_duration"] - len(wav) / 16000) < 1 / 25
    assert abs(facts["video_duration"] - facts["audio_duration"]) < 1 / 25
    frames, fps = media.read_video(out)
    assert frames.shape == res.frames.shape and fps == 25
    # H.264 yuv420p at crf 18 on 64² noise-like renders of the untrained decoder: close, not exact.
    assert np.abs(frames.astype(int) - res.frames).mean() < 20
    np.testing.assert_allclose(frames.mean((1, 2)), res.frames.mean((1, 2)), atol=4)
    pngs = G.write(res.frames, None, tmp_path / "frames")
    assert sorted(os.listdir(pngs)) == [f"{i:06d}.png" for i in range(t)]
    with pytest.raises(ConfigError, match="suffix"):
        G.write(res.frames, None, tmp_path / "out.gif")


def test_stream_matches_offline(gen, files):
    import jax
    import jax.numpy as jnp

    from vasa_jax.inference.motion import sample_sequence
    from vasa_jax.models.audio import log_mel

    wav = files["speech"][: 41 * SPF + 123]          # 41 frames: 5 full windows + 1 frame
    ctl = G.Controls(seed=3, emotion="sad")
    offline = gen.generate(wav, ctl)
    rng = np.random.default_rng(0)
    chunks = np.split(wav, np.sort(rng.integers(0, len(wav), 30)))   # includes empty chunks
    windows = list(gen.stream(iter(chunks), ctl))
    w = gen.window
    assert [len(x) for x in windows] == [w] * (41 // w) + [41 % w]
    # Same features, history and keys per window: identical frames (not merely close).
    np.testing.assert_array_equal(np.concatenate(windows), offline.frames)
    seg = gen.features.segment
    assert gen.last_stream_stats["max_buffer_samples"] <= seg + max(len(c) for c in chunks)
    # The windowed log-mel equals the whole-track STFT (constant padding) up to float error.
    feats = np.concatenate([np.asarray(f)[0, :n]
                            for f, n in G._windows_from_chunks(gen.features, [wav])])
    st = gen.norm.stats
    whole = (np.asarray(log_mel(jnp.asarray(wav)[None]))[0] - st["audio_feat_mean"]) \
        / st["audio_feat_std"]
    np.testing.assert_allclose(feats, whole, atol=1e-4)
    # The window loop is `inference.motion.sample_sequence` (same keys, history, padding).
    r = gen.resolve(ctl)
    sampler = gen._sampler(r.steps, tuple(r.scales))
    x = sample_sequence(sampler, jnp.asarray(feats)[None], r.gaze, r.distance, r.emotion,
                        jax.random.key(3), r.scales)
    np.testing.assert_allclose(gen.norm.motion_to_raw(np.asarray(x[0])), offline.motion,
                               rtol=1e-5, atol=1e-5)


def test_stream_yields_render_batches(gen, files):
    # A render batch below W: each window leaves in batches as they are decoded (the first
    # frame no longer waits for the whole window), and the frames are the offline ones.
    g = G.Generator(gen.bundle, render_batch=3)
    g.source = gen.source
    g._encode, g._samplers = gen._encode, gen._samplers     # same models: reuse those compiles
    wav = files["speech"][: 17 * SPF]                       # W = 8: windows of 8, 8, 1 frames
    ctl = G.Controls(seed=5)
    batches = list(g.stream([wav], ctl))
    w = gen.window
    per_window = [min(3, m - lo) for m in (w,) for lo in range(0, m, 3)]
    assert [len(b) for b in batches] == per_window * (17 // w) + [17 % w]
    offline = gen.generate(wav, ctl).frames
    diff = np.abs(np.concatenate(batches).astype(int) - offline.astype(int))
    assert diff.max() <= 1   # another decode batch shape: at most a rounding level


def test_one_compile_serves_any_length(gen, files):
    import chex

    wav = files["speech"]
    for n in (len(wav), 17 * SPF + 5, 8 * SPF, 3 * SPF + 639):
        res = gen.generate(wav[:n], G.Controls(seed=1))
        assert res.num_frames == n // SPF
    part = wav[:30 * SPF]
    for size in (160, 1000, 7777):
        chunks = [part[i:i + size] for i in range(0, len(part), size)]
        assert sum(len(f) for f in gen.stream(chunks, G.Controls(seed=1))) == 30
    counts = gen.trace_counts()
    assert counts["encode"] == counts["decode"] == counts["audio_window"] == 1, counts
    assert all(v == 1 for k, v in counts.items() if k.startswith("sampler")), counts
    # Also with chex's trace counter around a jitted function of the same static shape.
    calls = []

    @chex.assert_max_traces(n=1)
    def step(x):
        calls.append(1)
        return x * 2

    import jax

    f = jax.jit(step)
    for _ in range(3):
        f(np.zeros((gen.render_batch, 3), np.float32))
    assert len(calls) == 1


def test_controls(gen, files):
    wav = files["speech"][:20 * SPF]
    base = gen.generate(wav, G.Controls(seed=0)).motion
    st = gen.norm.stats
    same = gen.generate(wav, G.Controls(seed=0, gaze=st["gaze_mean"].tolist(),
                                        distance=float(st["distance_mean"][0]),
                                        emotion=[1, 0, 0, 0, 0])).motion
    np.testing.assert_allclose(same, base, atol=1e-5)    # defaults: mean gaze/distance, neutral
    happy = gen.generate(wav, G.Controls(seed=0, emotion="happy")).motion
    np.testing.assert_array_equal(happy, gen.generate(wav, G.Controls(seed=0, emotion=1)).motion)
    other = [gen.generate(wav, G.Controls(**{"seed": 0, **kw})).motion
             for kw in (dict(seed=1), dict(gaze=(20, -10)), dict(cfg={"audio": 2.0}),
                        dict(steps=3), dict(cfg={"emotion": 1.0}, emotion="angry"))]
    for m in other:   # the fixture's DiT has 2 training steps: controls move it only slightly
        assert m.shape == base.shape and not np.array_equal(m, base)
    r = gen.resolve(G.Controls(gaze=(20, -10), distance=4.0, emotion=[0.5, 0.5, 0, 0, 0],
                               cfg={"emotion": 1.5}, steps=7))
    np.testing.assert_allclose(r.gaze[0], (np.array([20, -10]) - st["gaze_mean"]) / st["gaze_std"],
                               rtol=1e-6)
    np.testing.assert_allclose(r.distance[0], (4.0 - st["distance_mean"]) / st["distance_std"],
                               rtol=1e-6)
    assert r.scales == {"audio": 0.5, "gaze": 1.0, "emotion": 1.5} and r.steps == 7
    assert r.emotion.tolist() == [[0.5, 0.5, 0, 0, 0]]
    for bad, match in ((dict(emotion="bored"), "unknown emotion"), (dict(gaze=(1,)), "gaze"),
                       (dict(steps=0), "steps"), (dict(cfg={"mouth": 1}), "unknown guidance"),
                       (dict(distance=-1), "distance"), (dict(emotion=[1, 0]), "emotion")):
        with pytest.raises(ConfigError, match=match):
            gen.generate(wav, G.Controls(**bad))
    for bad, match in ((np.zeros(8000, np.float32), "silent"), (np.zeros(0, np.float32), "empty"),
                       (np.ones(300, np.float32) * 0.1, "shorter than one video frame"),
                       (np.ones((2, 900), np.float32), "mono")):
        with pytest.raises(ConfigError, match=match):
            gen.generate(bad)


def test_head_pose_follow(gen, files):
    wav = files["speech"][:30 * SPF]
    t = np.arange(30)
    angles = np.stack([20 * np.sin(t / 5), 10 * np.cos(t / 7), 5 * np.sin(t / 3)], 1)
    free = gen.generate(wav, G.Controls(seed=0))
    res = gen.generate(wav, G.Controls(seed=0, head_pose=angles))
    np.testing.assert_allclose(res.motion[:, :3], angles, atol=1e-4)     # followed exactly
    np.testing.assert_array_equal(res.motion[:gen.window, 3:], free.motion[:gen.window, 3:])
    # Later windows see the followed pose in their history, so their dynamics change too.
    assert not np.allclose(res.motion[gen.window:, 7:], free.motion[gen.window:, 7:])
    # The frames are renders of exactly that motion.
    np.testing.assert_array_equal(res.frames[:8], next(gen.render(res.motion[:8])))
    full = np.concatenate([angles, np.tile([[0.01, -0.02, 0.0, 0.05]], (40, 1))[:30]], 1)
    np.testing.assert_allclose(gen.generate(wav, G.Controls(head_pose=full)).motion[:, :7], full,
                               atol=1e-4)
    streamed = np.concatenate(list(gen.stream([wav], G.Controls(seed=0, head_pose=angles))))
    np.testing.assert_array_equal(streamed, res.frames)
    with pytest.raises(ConfigError, match="head_pose has 10 rows"):
        gen.generate(wav, G.Controls(head_pose=angles[:10]))
    with pytest.raises(ConfigError, match="head_pose has shape"):
        gen.generate(wav, G.Controls(head_pose=np.zeros((30, 4))))


def test_video_driven_reenactment(gen, files, tmp_path):
    import jax.numpy as jnp

    drive = np.stack([_face((72, 96), seed=i) for i in range(30)])   # 30 frames at 30 fps
    path = media.write_video(tmp_path / "drive.mp4", drive, fps=30)
    res = gen.generate(controls=G.Controls(driving_video=path))
    assert res.frames.shape == (25, 64, 64, 3) and res.audio is None   # 1 s at 25 fps
    decoded, _ = media.read_video(path)
    crop = G.crop_resize(decoded[0], G.centre_box(72, 96), 64)
    z_pose, z_dyn = gen.face.encode_motion(jnp.asarray(crop[None], jnp.float32) / 127.5 - 1)
    np.testing.assert_allclose(res.motion[0], np.concatenate([z_pose[0], z_dyn[0]]), atol=1e-4)
    # With audio the length follows the audio (the video's last frame is held).
    wav = files["speech"][:40 * SPF]
    res = gen.generate(wav, G.Controls(driving_video=drive, driving_fps=30))
    assert res.num_frames == 40 and np.array_equal(res.motion[-1], res.motion[-2])
    out = gen.write(res.frames, res.audio, tmp_path / "reenact.mp4")
    assert media.probe_duration(out)["num_frames"] == 40
    assert gen.trace_counts()["encode_motion"] == 1
    with pytest.raises(ConfigError, match="offline only"):
        next(gen.stream([wav], G.Controls(driving_video=drive)))


def test_wav2vec2_front_end(gen, files):
    import jax
    from flax import nnx

    from vasa_jax.models import audio as A

    manifest = dict(gen.manifest, audio=dict(kind="wav2vec2", wav2vec2_path="/nonexistent",
                                             feature_dim=80))
    bundle = dataclasses.replace(gen.bundle, manifest=manifest)
    with pytest.raises(ConfigError, match="trained on Wav2Vec2 features.*--wav2vec2 DIR"):
        G.Generator(bundle)
    cfg = A.Wav2Vec2Config(hidden_size=80, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=32, conv_dim=(8,) * 7, num_conv_pos_embeddings=8,
                           num_conv_pos_embedding_groups=16)
    # Random weights filled in from numpy (eager initialisers would compile ~30 tiny programs).
    graphdef, state = nnx.split(nnx.eval_shape(lambda: A.Wav2Vec2(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), state)
    front = A.Wav2Vec2Features(nnx.merge(graphdef, state))
    g = G.Generator(bundle, audio_features=front)
    g.source = gen.source
    # Same face model and DiT: reuse their compiled functions (only Wav2Vec2 compiles here).
    g._encode, g._decode, g._samplers = gen._encode, gen._decode, gen._samplers
    wav = files["speech"][:20 * SPF]
    off = g.generate(wav, G.Controls(seed=0))
    on = np.concatenate(list(g.stream([wav[:5000], wav[5000:]], G.Controls(seed=0))))
    assert off.frames.shape == on.shape == (20, 64, 64, 3)   # streaming Wav2Vec2: approximate


# ----------------------------------------------------------------------------------------------
# The command line.


def _cli(args, capsys):
    """Runs the CLI in-process and returns (rc, stdout, stderr) of that call only.

    Cyclic garbage left by earlier tests (e.g. a closed asyncio loop of a notebook kernel
    client) can raise an "unraisable exception" warning whenever the collector runs, and that
    warning is printed to stderr. Collect it before capturing and keep the cycle collector off
    during the call, so that stderr holds only what the CLI wrote.
    """
    import gc

    from vasa_jax import cli

    gc.collect()
    capsys.readouterr()
    gc.disable()
    try:
        rc = cli.main(["generate", *map(str, args)])
    finally:
        gc.enable()
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_generate_end_to_end(bundle_dir, files, tmp_path):
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "vasa_jax.cli", "generate", "--checkpoint", bundle_dir,
           "--image", files["png"], "--audio", files["mp3"], "--out", out, "--emotion", "happy",
           "--gaze", "0,5", "--distance", "3.0", "--steps", "4", "--cfg-audio", "0.5",
           "--cfg-gaze", "1.0", "--seed", "0", "--stream"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    speech = media.read_audio(files["mp3"])
    facts = media.probe_duration(out)
    assert facts["num_frames"] == len(speech) // SPF
    assert abs(facts["video_duration"] - len(speech) / 16000) < 1 / 25


def test_cli_frames_dir_and_m4a(gen, files, tmp_path, capsys, monkeypatch):
    """The CLI's plumbing (m4a input, --frames-dir, --cfg, --emotion vector, --head-pose) on the
    already compiled shared generator; the full path runs in the subprocess test above."""
    monkeypatch.setattr(G.Generator, "from_bundle", classmethod(lambda cls, path, **kw: gen))
    n = len(media.read_audio(files["m4a"])) // SPF
    np.save(tmp_path / "pose.npy", np.zeros((n, 3), np.float32))
    out = tmp_path / "frames"
    rc, stdout, err = _cli(["--checkpoint", "unused", "--image", files["png"], "--audio",
                            files["m4a"], "--out", out, "--frames-dir", "--no-progress",
                            "--cfg", "emotion=0.5", "--emotion", "0,1,0,0,0",
                            "--head-pose", tmp_path / "pose.npy"], capsys)
    assert rc == 0, err
    assert len(os.listdir(out)) == n and f"{n} frames" in stdout
    rc, _, err = _cli(["--checkpoint", "unused", "--image", files["png"], "--audio",
                       files["m4a"], "--out", tmp_path / "o.mp4", "--gaze", "1"], capsys)
    assert rc == 2 and "--gaze '1': expected two numbers" in err


@pytest.fixture(scope="module")
def bad_inputs(files, bundle_dir, tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("bad")
    (d / "text.png").write_text("this is not an image")
    Image.fromarray(_face((48, 60))).save(d / "small.png")
    media.write_wav(d / "silent.wav", np.full(16000, 3e-5, np.float32))
    media.write_wav(d / "empty.wav", np.zeros(0, np.float32))
    wrong = d / "wrong_bundle"
    shutil.copytree(bundle_dir, wrong)
    import json

    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["face"]["model"]["id_dim"] = 48
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    (d / "not_bundle").mkdir()
    return d


@pytest.mark.parametrize("case, match", [
    ("missing_image", "image file not found"),
    ("text_png", "cannot decode"),
    ("small_image", "smaller than the model input 64x64"),
    ("missing_audio", "audio file not found"),
    ("empty_audio", "no audio samples"),
    ("silent_audio", "is silent"),
    ("not_bundle", "not a vasa_jax model bundle"),
    ("workdir", "training workdir"),
    ("wrong_model", "does not match its manifest"),
    ("bad_out", "use a .mp4 path"),
])
def test_cli_bad_input(case, match, bad_inputs, files, bundle_dir, face_workdir, tmp_path,
                       capsys):
    d = bad_inputs
    args = dict(checkpoint=bundle_dir, image=files["png"], audio=files["wav"],
                out=tmp_path / "out.mp4")
    args.update({
        "missing_image": dict(image=d / "nope.png"), "text_png": dict(image=d / "text.png"),
        "small_image": dict(image=d / "small.png"), "missing_audio": dict(audio=d / "nope.wav"),
        "empty_audio": dict(audio=d / "empty.wav"), "silent_audio": dict(audio=d / "silent.wav"),
        "not_bundle": dict(checkpoint=d / "not_bundle"), "workdir": dict(checkpoint=face_workdir),
        "wrong_model": dict(checkpoint=d / "wrong_bundle"),
        "bad_out": dict(out=tmp_path / "out.avi"),
    }[case])
    argv = [x for k, v in args.items() for x in (f"--{k}", v)]
    rc, _, err = _cli(argv, capsys)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], err
    assert lines[0].startswith("vasa-jax generate: error:")
    assert not os.path.exists(args["out"]) and not list(tmp_path.glob(".out*"))


def test_cli_bad_input_exit_code(bundle_dir, files, bad_inputs, tmp_path):
    """The real process: exit status 2, one stderr line, no out.mp4 (silent audio)."""
    out = tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "vasa_jax.cli", "generate", "--checkpoint",
                           str(bundle_dir), "--image", str(files["png"]), "--audio",
                           str(bad_inputs / "silent.wav"), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "silent" in proc.stderr
    assert not out.exists()
