"""Stage-1 and stage-2 evaluation scripts: metric functions on inputs with known answers, and
both scripts end to end on tiny fixtures (real checkpoints, real SynthTalk renders)."""

import json
import os

import numpy as np
import pytest

from vasa_jax.eval import face_latent as eval1
from vasa_jax.eval import motion as eval2



def test_psnr_known_values():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] += 1  # MSE 1 → 20·log10(255) dB
    b[1] += 255
    got = eval1.psnr(a, b)
    np.testing.assert_allclose(got, [20 * np.log10(255.0), 0.0], atol=1e-9)


def test_linear_probe_recovers_linear_targets_and_fails_on_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    w = rng.normal(size=(6, 2))
    y = x @ w + 3.0
    r = eval1.probe_r2(x[:300], y[:300], x[300:], y[300:])
    assert r["r2"] > 0.999
    noise = eval1.probe_r2(x[:300], rng.normal(size=(300, 1)), x[300:], rng.normal(size=(100, 1)))
    assert noise["r2"] < 0.1
    labels = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)
    assert eval1.probe_accuracy(x[:300], labels[:300], x[300:], labels[300:]) > 0.8
    assert eval2.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert eval2.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_bootstrap_ci_resamples_groups_not_items():
    # Two identities, 1 and 3 frames: frames of one identity move together.
    groups = np.array([7, 9, 9, 9])
    values = np.array([0.0, 10.0, 10.0, 10.0])
    lo, hi = eval1.bootstrap_ci(groups, lambda i: values[i].mean(), draws=2000)
    # Draws of two identities: {7,7} → 0, {9,9} → 10, one of each → 7.5 (3 of 4 frames at 10).
    assert (lo, hi) == (0.0, 10.0)
    seen = set()
    eval1.bootstrap_ci(groups, lambda i: seen.add(len(i)) or 0.0, draws=200)
    assert seen == {2, 4, 6}  # 1+1, 1+3, 3+3 frames
    assert eval1.bootstrap_ci(groups, lambda i: 3.0, draws=50) == [3.0, 3.0]


def test_stage1_eval_codes_match_the_full_encoder(face_workdir):
    """The eval keeps only the codes of its 1,000s of clips, from a function that skips the
    appearance volume and the skip features: they equal the full encoder's."""
    from vasa_jax.train.face_latent import restore_generator

    gen = restore_generator(face_workdir)[0]
    encode, _, codes = eval1._jitted(gen)
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    full, only = encode(frames), codes(frames)
    assert set(only) == {"z_id", "z_pose", "z_dyn"} and "v_app" in full
    for k, v in only.items():
        np.testing.assert_allclose(v, full[k], rtol=1e-5, atol=1e-6)


def test_stage1_eval_end_to_end(face_workdir, tmp_path):
    out = str(tmp_path / "eval1")
    r = eval1.evaluate(face_workdir, out, cross_frames=3)
    saved = json.load(open(os.path.join(out, "eval.json")))
    assert saved["self_psnr"] == pytest.approx(r["self_psnr"])
    # 2 held-out identities × 2 clips × 2 sources × 19 drivers; 2 ordered pairs × 3 frames.
    assert r["self_psnr_pairs"] == 2 * 2 * 2 * 19 and r["cross_psnr_pairs"] == 2 * 3
    assert 0 < r["self_psnr"] < 60 and 0 < r["cross_psnr"] < 60
    for name in ("pose_rotation", "dyn_mouth", "dyn_gaze", "dyn_blink", "dyn_emotion"):
        assert np.isfinite(r["probes"][name]["r2"])
    assert r["identity_probe"]["chance"] == 0.5
    assert set(r["meets"]) == {"self_psnr", "cross_psnr", "pose_r2", "mouth_r2"}
    assert os.path.getsize(os.path.join(out, "samples.png")) > 0
    assert r["held_out_identities"] == 2
    assert set(r["probes_seen_faces"]) == {"pose_rotation", "dyn_mouth"}
    assert all(np.isfinite(v["r2"]) for v in r["probes_seen_faces"].values())
    for key in ("self_psnr", "cross_psnr", "pose_r2", "mouth_r2"):
        lo, hi = r["ci90"][key]
        assert np.isfinite(lo) and lo <= hi
    assert r["ci90"]["self_psnr"][0] <= r["self_psnr"] <= r["ci90"]["self_psnr"][1]


def test_stage1_eval_more_held_out_identities(face_workdir, tmp_path):
    # 3 held-out identities where the run has 2: the run's 2 and SynthTalk's next test identity,
    # each driven by the next one identity.
    from vasa_jax.data import builders

    r = eval1.evaluate(face_workdir, str(tmp_path / "eval3"), cross_frames=3, held_out=3,
                       cross_drivers=1, bootstrap=100)
    assert r["held_out_identities"] == 3
    assert r["self_psnr_pairs"] == 3 * 2 * 2 * 19 and r["cross_psnr_pairs"] == 3 * 1 * 3
    assert r["identity_probe"]["chance"] == pytest.approx(1 / 3)
    st = json.load(open(os.path.join(face_workdir, "config.json")))["data"]["synthtalk"]
    two = builders.test_identity_ids(builders.SynthTalkConfig(**st))
    three = builders.test_identity_ids(builders.SynthTalkConfig(**dict(st, num_test_identities=3)))
    assert three[:2] == two and len(set(three)) == 3
    with pytest.raises(ValueError, match="cross_drivers"):
        eval1.evaluate(face_workdir, str(tmp_path / "bad"), cross_drivers=0)


def test_stage2_eval_end_to_end(face_workdir, motion_workdir, tmp_path):
    mdir = motion_workdir
    out = str(tmp_path / "eval2")
    r = eval2.evaluate(face_workdir, mdir, out, steps=2)
    assert r["clips"] == 4 and r["motion_step"] == 2 and r["steps"] == 2
    for row in ("real_latent", "generated_latent", "generated_video", "other_audio_video"):
        v = r["mouth_correlation"][row]
        assert len(v["per_clip"]) == 4 and -1.0 <= v["mean"] <= 1.0
    assert r["head_angle_seed_difference_deg"] > 0  # two seeds, two motions
    from vasa_jax.data import media

    frames, _ = media.read_video(os.path.join(out, "sample.mp4"))
    assert frames.shape == (20, 64, 64, 3)
    facts = media.probe_duration(os.path.join(out, "sample.mp4"))
    assert facts["video_duration"] == pytest.approx(0.8, abs=0.04)
    assert facts["audio_duration"] == pytest.approx(0.8, abs=0.08)


def test_stage2_eval_and_generation_on_a_stage1_that_reads_larger_frames(stack_in128,
                                                                          motion_workdir,
                                                                          tmp_path):
    """A stage 1 with model.input_size 128 (draws 64²): latents come from the 128² frames, the
    stage-2 eval replicates the drawn frames up to 128² before re-encoding and its real_video
    row puts the real frames through the same path; the bundle crops portraits and driving
    frames at 128² and draws 64². Latents from a stage 1 of another input size are refused."""
    from PIL import Image

    from vasa_jax.data import builders, latents, media
    from vasa_jax.errors import ConfigError
    from vasa_jax.inference import generate as G
    from vasa_jax.inference.bundle import load_bundle

    st = stack_in128
    assert latents.read_info(st["latents"])["synthtalk"]["resolution"] == 128
    out = str(tmp_path / "eval")
    r = eval2.evaluate(st["face"], st["motion"], out, steps=2, max_clips=2)
    for row in ("real_latent", "real_video", "generated_video", "other_audio_video"):
        v = r["mouth_correlation"][row]
        assert len(v["per_clip"]) == 2 and -1.0 <= v["mean"] <= 1.0
    frames, _ = media.read_video(os.path.join(out, "sample.mp4"))
    assert frames.shape == (20, 64, 64, 3)
    assert Image.open(os.path.join(out, "frames.png")).size[1] == 3 * 64  # gt | seed 0 | seed 1
    # A stage 2 trained on 64² latents against the 128² stage 1: one line naming both.
    with pytest.raises(ConfigError, match="extracted from 64² frames but .* reads 128²"):
        eval2.evaluate(st["face"], motion_workdir, str(tmp_path / "bad"), steps=2, max_clips=1)
    assert not os.path.exists(tmp_path / "bad")

    bundle = load_bundle(st["bundle"])
    assert (bundle.input_size, bundle.image_size) == (128, 64)
    gen = G.Generator(bundle)
    clip = builders.prepare_synthtalk(
        os.path.join(st["face"], "data"),
        **json.load(open(os.path.join(st["face"], "config.json")))["data"]["synthtalk"])["test"][0]
    real = builders.decode_frames(clip["frames"])
    assert real.shape[1:3] == (128, 128)
    src = gen.prepare(real[0])
    assert src.image.shape == (128, 128, 3)
    audio = np.asarray(clip["audio"], np.float32)
    res = gen.generate(audio, G.Controls(steps=2, seed=0))
    assert res.frames.shape[1:] == (64, 64, 3) and len(res.frames) > 0
    driven = gen.generate(audio, G.Controls(driving_video=real))
    assert driven.frames.shape == (len(real), 64, 64, 3)


def test_bundle_round_trip(bundle_dir, face_workdir, motion_workdir, tmp_path):
    import jax
    from flax import nnx

    from vasa_jax.errors import ConfigError
    from vasa_jax.inference.bundle import load_bundle, params_hash
    from vasa_jax.train.face_latent import restore_generator
    from vasa_jax.train.motion import restore_motion_model

    b = load_bundle(bundle_dir)
    gen, _, _ = restore_generator(face_workdir)
    model, _, norm, _ = restore_motion_model(motion_workdir)
    for built, ref in ((b.face, gen), (b.motion, model)):
        x = jax.tree.leaves(nnx.state(built))
        y = jax.tree.leaves(nnx.state(ref))
        assert len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y))
    assert b.checkpoint_hash == params_hash(nnx.state(gen).to_pure_dict(),
                                            nnx.state(model).to_pure_dict())
    assert len(b.checkpoint_hash) == 64 and b.image_size == 64
    np.testing.assert_array_equal(b.stats["motion_mean"], np.asarray(norm.stats["motion_mean"]))
    with pytest.raises(ConfigError, match="training workdir"):
        load_bundle(face_workdir)
    with pytest.raises(ConfigError, match="not a vasa_jax model bundle"):
        load_bundle(str(tmp_path))
