"""The evaluation suite end to end on the tiny fixtures: the three evaluation networks trained for
a few steps on SynthTalk (saved and reloaded), `vasa-jax evaluate` on the fixture bundle, and the
pieces with known answers (oracle target coding, the CLIP loss, CAPP's perturbations)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vasa_jax.eval import capp, oracle, runner

_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "eval.py"


@pytest.fixture(scope="session")
def eval_config():
    from vasa_jax.config_util import load_config

    return load_config(f"{_CONFIG}:test")


@pytest.fixture(scope="session")
def evaluators_dir(eval_config, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("evaluators"))
    runner.ensure_evaluators(out, eval_config)
    return out


def test_evaluators_train_save_and_reload(evaluators_dir):
    from vasa_jax.eval import evaluators

    metas = {k: evaluators.read_meta(os.path.join(evaluators_dir, n), k)
             for n, k in (("syncnet", "syncnet"), ("oracle", "synthtalk_oracle"),
                          ("capp", "capp"))}
    held = metas["synthtalk_oracle"]["metrics"]["held_out"]
    assert set(oracle.TARGETS) <= set(held) and 0 <= held["emotion"]["clip_accuracy"] <= 1
    assert held["identities"] == 2
    by_shift = metas["capp"]["metrics"]["held_out"]["score_by_shift"]
    assert set(by_shift) == {str(d) for d in range(-4, 5)}
    assert 0 <= metas["syncnet"]["metrics"]["held_out"]["offset_accuracy"] <= 1
    o = oracle.Oracle.load(os.path.join(evaluators_dir, "oracle"))
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    r = o(frames)
    assert r["rotation"].shape == (3, 3) and r["identity"].shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(r["identity"], axis=1), 1.0, rtol=1e-5)


def test_oracle_target_coding_round_trips():
    rng = np.random.default_rng(0)
    clip = {name: rng.normal(size=(4, w) if w > 1 else (4,)) for name, (w, _, _) in
            oracle.TARGETS.items()}
    back = oracle._decode(oracle._targets(clip))
    for name in oracle.TARGETS:
        np.testing.assert_allclose(back[name], clip[name], rtol=1e-5, atol=1e-5)


def test_clip_loss_and_capp_perturbations():
    import jax.numpy as jnp

    e = jnp.eye(4)
    low = float(capp.clip_loss(e, e, jnp.log(100.0)))
    high = float(capp.clip_loss(e, e[::-1], jnp.log(100.0)))
    assert low < 1e-3 < np.log(4) < high
    pose = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 5), np.float32)
    np.testing.assert_array_equal(capp.shift_pose(pose, 2)[2:], pose[:-2])
    np.testing.assert_allclose(capp.scale_variation(pose, 0.0), np.full_like(pose, 9.5))
    np.testing.assert_allclose(capp.scale_variation(pose, 1.0), pose)


def test_capp_hard_negatives_and_per_frame_embedding():
    import jax.numpy as jnp
    from flax import nnx

    # A hard negative identical to the positive takes half the audio → pose probability.
    e = jnp.eye(4)
    base = float(capp.clip_loss(e, e, jnp.log(100.0)))
    hard = float(capp.clip_loss(e, e, jnp.log(100.0), e[:, None, :]))
    assert hard - base == pytest.approx(np.log(2) / 2, abs=1e-3)
    # Shifted windows are the same clip's pose `d` frames later (a ramp makes that visible).
    ramp = [np.arange(40, dtype=np.float32)[:, None] * np.ones((1, 5), np.float32)]
    mel = [np.zeros((40, 80), np.float32)]
    m, p, q = capp._batches(mel, ramp, np.random.default_rng(0), 3, 30, (-3, 5))
    assert m.shape == (3, 30, 80) and q.shape == (3, 2, 30, 5)
    np.testing.assert_array_equal(q[:, 0] - p, -3.0)
    np.testing.assert_array_equal(q[:, 1] - p, 5.0)
    net = capp.CAPPNet(capp.CAPPConfig(width=8, heads=2, pose_layers=1, audio_layers=1,
                                       embed_dim=6, window=30, frame_dim=2, velocity=True),
                       rngs=nnx.Rngs(0))
    a, pe = net(jnp.asarray(m), jnp.asarray(p))
    assert a.shape == pe.shape == (3, 6 + 30 * 2)
    np.testing.assert_allclose(np.linalg.norm(pe, axis=1), 1.0, rtol=1e-5)
    # The per-frame part sees timing: moving the pose changes its embedding.
    moved = np.asarray(net.embed_pose(jnp.asarray(capp.shift_pose(p[0], 2)[None])))[0]
    assert float(np.abs(moved - np.asarray(pe[0])).max()) > 1e-4


def test_oracle_training_frames_decouple_factors_from_faces():
    from vasa_jax.eval import oracle as orc

    d = orc.training_frames(identities=2, frames_per_identity=6, tracks=2, track_frames=20,
                            resolution=64, seed=1, blink_fraction=0.5)
    assert d["frames"].shape == (12, 64, 64, 3) and d["frames"].dtype == np.uint8
    assert d["targets"].shape == (12, sum(w for w, _, _ in orc.TARGETS.values()))
    np.testing.assert_array_equal(d["identity"], np.repeat([0, 1], 6))
    # Each face is seen with several emotions and poses (not one clip's).
    assert all(len(set(d["emotion"][d["identity"] == k])) > 1 for k in (0, 1))
    rot = orc._decode(d["targets"])["rotation"]
    assert np.std(rot[:6, 0]) > 1.0
    again = orc.training_frames(2, 6, 2, 20, 64, seed=1, blink_fraction=0.5)
    np.testing.assert_array_equal(again["frames"], d["frames"])
    import jax

    x = jax.numpy.asarray(d["frames"], jax.numpy.float32) / 127.5 - 1.0
    y = np.asarray(orc._augment(x, jax.random.key(0)))
    assert y.shape == x.shape and y.min() >= -1.0 and y.max() <= 1.0
    assert 1e-3 < float(np.abs(y - np.asarray(x)).mean()) < 0.3


def test_evaluate_end_to_end(bundle_dir, evaluators_dir, eval_config, tmp_path):
    out = str(tmp_path / "eval")
    r = runner.evaluate(bundle_dir, "test", out, steps=2, cfg_audio=0.5, config=eval_config,
                        evaluators_dir=evaluators_dir)
    with open(os.path.join(out, "eval.json"), encoding="utf-8") as f:
        saved = json.load(f)
    rows = saved["rows"]
    assert {"real", "ours", "still", "copied", "cfg_audio=0", "cfg_audio=1", "steps=3"} <= set(rows)
    assert rows["steps=2"] == rows["ours"]             # the ablation shares the main row
    for name, row in rows.items():
        for key, _, _ in runner.COLUMNS:
            if key != "fvd25":
                assert np.isfinite(row[key]), (name, key)
        assert row["videos"] == (2 if name in ("real", "still", "copied") else 2 * 1)
    # Known answers: a repeated frame has no head motion and is its own identity.
    assert rows["still"]["delta_p"] == 0.0
    assert rows["still"]["identity_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert rows["real"]["delta_p"] > 0.0
    table = Path(out, "table.md").read_text(encoding="utf-8")
    assert "| Real video |" in table and "Sc ↑" in table and "λ_A = 2" not in table
    assert "λ_A = 1" in table and "| 3 steps |" in table
    assert r["steps"] == 2 and r["cfg_audio"] == 0.5


def test_evaluate_a_bundle_that_reads_larger_frames(stack_in128, evaluators_dir, eval_config,
                                                    tmp_path):
    """A bundle whose face model reads 128² frames and draws 64²: the runner renders its clips
    at 128² for the portrait and the driving video, and measures every row at 64²."""
    cfg = eval_config.copy_and_resolve_references()
    cfg.runner.ablation = False
    r = runner.evaluate(stack_in128["bundle"], "test", str(tmp_path / "eval"), steps=2,
                        config=cfg, evaluators_dir=evaluators_dir)
    assert r["resolution"] == 64
    assert set(r["rows"]) == {"real", "still", "copied", "ours"}
    for name, row in r["rows"].items():
        assert np.isfinite(row["sc"]) and np.isfinite(row["identity_similarity"]), name
    assert r["rows"]["still"]["delta_p"] == 0.0
    assert r["rows"]["still"]["identity_similarity"] == pytest.approx(1.0, abs=1e-5)


def test_evaluate_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, bundle_dir):
    from vasa_jax import cli

    out = tmp_path / "never"
    rc = cli.main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not a vasa_jax model bundle" in err
    rc = cli.main(["evaluate", "--checkpoint", bundle_dir, "--steps", "0", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--steps 0" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_render_clips_stride_takes_every_kth_frame_of_a_longer_clip():
    from vasa_jax.eval import evaluators

    full = evaluators.render_clips("train", 1, 9, 64, seed=3, clips_per_identity=1, render=False)
    sub = evaluators.render_clips("train", 1, 3, 64, seed=3, clips_per_identity=1, stride=3)
    # The same clip seed: the strided clip is frames 0, 3, 6 of the 9-frame clip's motion.
    np.testing.assert_allclose(sub[0]["rotation"], full[0]["rotation"][::3], rtol=1e-6)
    assert sub[0]["frames"].shape == (3, 64, 64, 3) and sub[0]["audio"] is None
    assert min(evaluators.identity_ids("held_out", 1)) > max(evaluators.identity_ids("train", 5))
