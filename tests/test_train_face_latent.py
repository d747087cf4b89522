"""Stage-1 trainer end to end on the tiny config: real SynthTalk data, real orbax checkpoints.

Checks resume equality (interrupted + resumed == uninterrupted), sharded (8 fake devices) ==
single device, and that a non-finite loss stops training naming the step and the last good
checkpoint, without writing a checkpoint of the bad state.
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vasa_jax.data import synthtalk
from vasa_jax.config_util import load_config, set_fields
from vasa_jax.train.common import NonFiniteLossError, read_metrics
from vasa_jax.train import loop
from vasa_jax.train.face_latent import build_state_fns, restore_generator, train

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "face_latent.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("face_data"))


def _config(data_dir, **overrides):
    cfg = load_config(f"{CONFIG}:tiny")
    cfg.data.data_dir = data_dir
    cfg.data.synthtalk.num_frames = 8
    cfg.data.synthtalk.num_train_identities = 4
    cfg.data.synthtalk.num_test_identities = 1
    cfg.log_every = 1
    cfg.sample_every = 1000
    cfg.ckpt_every = 2
    # Narrower than `tiny` (every loss term kept): these tests check equalities, not quality,
    # and the suite must stay well under 20 minutes on 2 cores.
    cfg.model.update(dict(base_channels=8, max_channels=16, volume_size=8, volume_channels=4,
                          encoder_channels=8, encoder_max_channels=16, id_dim=8, dyn_dim=8,
                          warp_channels=8, decoder_channels=16))
    cfg.disc.update(dict(num_scales=1, base_channels=8, max_channels=8, num_layers=1))
    return set_fields(cfg, overrides)


# For tests about something other than the adversarial and consistency terms: without them the
# train step is a smaller graph to compile (the resume and sharding tests keep every term).
NO_GAN = {"loss.gan": 0.0, "loss.feature_matching": 0.0, "loss.consist": 0.0}


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir)}


def test_resume_matches_uninterrupted_run(tmp_path, data_dir):
    straight = str(tmp_path / "straight")
    train(_config(data_dir, steps=4), straight)
    resumed = str(tmp_path / "resumed")
    train(_config(data_dir, steps=2), resumed)
    train(_config(data_dir, steps=4), resumed)
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):  # after the restart: same batches, same parameters, same losses
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6)
    assert a[4] != a[3]
    saved = set(os.listdir(os.path.join(resumed, "checkpoints")))
    assert {"2", "4"} <= saved and "3" not in saved  # every ckpt_every steps (+ the first)


def test_sharded_step_equals_single_device(tmp_path, data_dir, devices):
    # With the camera-roll and mirror augmentations on: their angles and coins are drawn
    # inside the sharded step and must be the same on any mesh.
    aug = dict(augment_roll_deg=10.0, augment_mirror_prob=0.5)
    single = str(tmp_path / "single")
    train(_config(data_dir, steps=2, **aug, **{"mesh.num_devices": 1, "mesh.data": 1}), single)
    sharded = str(tmp_path / "sharded")
    train(_config(data_dir, steps=2, **aug, **{"mesh.data": 4, "mesh.fsdp": 2}), sharded)
    a, b = read_metrics(single), read_metrics(sharded)
    for ra, rb in zip(a, b):
        for k in ("loss", "l1", "perceptual", "gan", "d_loss", "consist"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (ra["step"], k)
        # Step 2's losses are computed with step 1's updated parameters, so they also check
        # that the sharded update equals the single-device one.
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=3e-5)
    # The parameters themselves after two steps (generator, discriminator, EMA), read back
    # from each run's final checkpoint onto one device.
    pa = _final_state(single)
    pb = _final_state(sharded)
    assert int(pa["step"]) == int(pb["step"]) == 2
    # Relative to each tree's largest parameter: zero-initialised conv biases that feed a
    # GroupNorm have an exactly-zero gradient in exact arithmetic, and Adam rescales the float
    # noise they receive to ±lr-sized steps (~1e-7 here) on any mesh, so a per-tensor relative
    # measure of those tensors compares noise with noise.
    for tree in ("gen", "disc", "ema"):
        a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(pa[tree])])
        b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(pb[tree])])
        assert a.shape == b.shape and np.any(a != 0)
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(a)), tree


def _final_state(workdir):
    return jax.device_get(loop.restore_on_one_device(workdir, build_state_fns, "stage-1")[2])


def test_cross_identity_loss_with_a_trained_identity_net(tmp_path, data_dir):
    from vasa_jax.models.identity_net import load_identity_net
    from vasa_jax.train import identity

    id_cfg = load_config(str(Path(CONFIG).with_name("identity.py")) + ":tiny")
    id_cfg.data.data_dir = data_dir
    id_cfg.data.synthtalk.update(_config(data_dir).data.synthtalk.to_dict())
    id_cfg.steps, id_cfg.batch_size, id_cfg.log_every = 3, 4, 1
    id_dir = str(tmp_path / "idnet")
    metrics = identity.train(id_cfg, id_dir)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["train"]["queries"] > 0
    net, meta = load_identity_net(os.path.join(id_dir, "identity_net"))
    assert meta["arch"]["dim"] == id_cfg.net.dim
    emb = net(np.zeros((2, 64, 64, 3), np.float32))
    assert emb.shape == (2, id_cfg.net.dim)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-5)

    workdir = str(tmp_path / "xid")
    # A ~0 s time budget as well: training stops right after the second step and saves it.
    train(_config(data_dir, steps=50, identity_net=os.path.join(id_dir, "identity_net"),
                  max_train_minutes=1e-9, ckpt_every=100, augment_roll_deg=8.0,
                  head_pose_scale_deg=(40.0, 32.0, 16.0),
                  **{"loss.cross_id": 0.5, "loss.head_pose": 1.0, "loss.expression": 1.0,
                     "expression_dims": 4, "loss.head_position": 1.0, "model.skip_channels": 4,
                     "model.skip_blend": True, "model.skip_static": True,
                     "data.cross_clip_prob": 1.0, "supervise_other": True, **NO_GAN}), workdir)
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["train_minutes"] >= 0.0
    assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))
    assert all(0.0 <= r["cross_id"] <= 2.0 for r in rows)
    # The head-pose term is on too: |angles| / (40°, 32°, 16°) of an untrained encoder vs
    # SynthTalk's truth.
    assert all(0.0 < r["head_pose"] < 5.0 for r in rows)
    # So are the expression anchor (|z_dyn[:, :4] − (mouth opening, blink, mouth width,
    # rounding)|, all 0…1, of an untrained encoder), the head-position term (|(t_x, t_y, log s)
    # − truth| / 0.1 with a zero-initialised pose head) and the source skip with both copies
    # (its encoder is in the checkpoint, the decoder has two blend logits). Every driver comes
    # from the identity's other clip (data.cross_clip_prob 1); the camera-roll augmentation turns
    # the source's and driver's readings; the motion terms also read the other identity's
    # (unturned) frame.
    assert all(0.0 < r["expression"] < 5.0 for r in rows)
    assert all(0.0 < r["head_position"] < 20.0 for r in rows)
    gen = restore_generator(workdir)[0]
    assert gen.skip == 4 and gen.skip_encoder.conv1.kernel[...].shape == (3, 3, 3, 4)
    assert gen.decoder.static and gen.decoder.to_rgb.bias.shape == (5,)


def test_cross_identity_weight_without_a_network_is_refused(tmp_path, data_dir):
    from vasa_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="identity_net"):
        train(_config(data_dir, steps=1, **{"loss.cross_id": 0.5}), str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="expression_dims"):
        train(_config(data_dir, steps=1, expression_dims=3, **{"loss.expression": 1.0}),
              str(tmp_path / "w2"))
    with pytest.raises(ConfigError, match="cross_clip_prob"):
        train(_config(data_dir, steps=1, **{"data.cross_clip_prob": 2.0}), str(tmp_path / "w3"))
    with pytest.raises(ConfigError, match="augment_roll_deg"):
        train(_config(data_dir, steps=1, augment_roll_deg=-1.0), str(tmp_path / "w4"))
    with pytest.raises(ConfigError, match="augment_mirror_prob=1.5"):
        train(_config(data_dir, steps=1, augment_mirror_prob=1.5), str(tmp_path / "w4m"))
    with pytest.raises(ConfigError, match="head_pose_scale_deg"):
        train(_config(data_dir, steps=1, head_pose_scale_deg=(30.0, 0.0, 30.0),
                      **{"loss.head_pose": 1.0}), str(tmp_path / "w5"))
    with pytest.raises(ConfigError, match="motion_keypoints=2"):  # 4 landmarks to guide
        train(_config(data_dir, steps=1, **{"loss.keypoints": 1.0, "model.motion_keypoints": 2}),
              str(tmp_path / "w6"))
    for bad in (0, len(synthtalk.LANDMARKS) + 1):
        with pytest.raises(ConfigError, match=f"keypoint_landmarks={bad}"):
            train(_config(data_dir, steps=1, keypoint_landmarks=bad,
                          **{"loss.keypoints": 1.0, "model.motion_keypoints": 16}),
                  str(tmp_path / "w7"))


def test_keypoint_guidance_refuses_data_with_fewer_landmarks_than_asked():
    # SynthTalk before builder 1.2.0 stored 4 landmarks per frame; guiding 8 on it must say so
    # instead of quietly guiding 4.
    from vasa_jax.errors import ConfigError
    from vasa_jax.train.face_latent import motion_terms

    cfg = _config("", keypoint_landmarks=8, **{"loss.keypoints": 1.0,
                                               "model.motion_keypoints": 16})
    coded = {"source": {"keypoints": jnp.zeros((2, 16, 2))}}
    old = {"source_landmarks": jnp.zeros((2, 4, 2))}
    with pytest.raises(ConfigError, match="keypoint_landmarks=8 but the data has 4 landmarks"):
        motion_terms(cfg, coded, old)
    new = {"source_landmarks": jnp.full((2, len(synthtalk.LANDMARKS), 2), 0.02)}
    assert float(motion_terms(cfg, coded, new)["keypoints"]) == pytest.approx(1.0)


def test_input_size_trains_on_larger_frames_and_evaluates_at_image_size(tmp_path):
    """model.input_size 128 with a 64² decoder: the data is rendered at 128², the losses
    compare the 64² output with the box-filtered driver, and the eval encodes 128² frames and
    scores 64² ones; data at the wrong size is refused naming both fields. The eval also scores
    the raw weights on request."""
    import json

    from vasa_jax.errors import ConfigError
    from vasa_jax.eval.face_latent import evaluate

    fields = {"model.input_size": 128, "model.motion_stem_stride": 2,
              "data.synthtalk.resolution": 128, "data.synthtalk.num_test_identities": 2,
              **NO_GAN}
    with pytest.raises(ConfigError, match="resolution=64 differs from the model's input size"):
        train(_config(str(tmp_path / "d64"), steps=1, **{"model.input_size": 128}),
              str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")  # refused before anything is written
    workdir = str(tmp_path / "w")
    train(_config(str(tmp_path / "d128"), steps=2, **fields), workdir)
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) and 0.0 < r["l1"] < 2.0 for r in rows)
    gen = restore_generator(workdir)[0]
    assert (gen.input_size, gen.image_size) == (128, 64)
    result = evaluate(workdir, str(tmp_path / "eval"), bootstrap=0)
    saved = json.load(open(tmp_path / "eval" / "eval.json"))
    assert (saved["input_size"], saved["image_size"]) == (128, 64)
    # Copying the source is scored against the box-filtered frames: a real PSNR, not inf.
    assert 5.0 < result["self_psnr"] < 60.0 and 5.0 < result["self_psnr_copy_source"] < 60.0
    assert np.isfinite(result["cross_psnr"])
    # --weights raw: the last step's weights, not their EMA (which after 2 warm-up steps is
    # still mostly the initialisation), so the scores move; the file says which were scored.
    raw = evaluate(workdir, str(tmp_path / "raw"), bootstrap=0, ema=False)
    assert (result["weights"], raw["weights"]) == ("ema", "raw") and raw["step"] == 2
    assert json.load(open(tmp_path / "raw" / "eval.json"))["weights"] == "raw"
    assert abs(raw["self_psnr"] - result["self_psnr"]) > 1e-3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    workdir = str(tmp_path / "nan")
    cfg = _config(data_dir, steps=6, lr=1e30, warmup_steps=0, ckpt_every=1, **NO_GAN)
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* at step (\d+)") as err:
        train(cfg, workdir)
    msg = str(err.value)
    bad_step = int(msg.split(" at step ")[1].split(";")[0])
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))
                   if s.isdigit())
    assert all(s < bad_step for s in saved)
    if saved:
        assert f"last good checkpoint is step {saved[-1]}" in msg
    assert "\n" not in msg
    rows = read_metrics(workdir)
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_supervise_other_adds_the_other_frame_to_the_motion_losses():
    """With supervise_other the head-pose, head-position, expression and keypoint terms of a step
    equal the losses over the source, driver and other frames' codes, not over the source and
    driver only (the other frame's truth differs, so the two cannot agree by chance)."""
    from flax import nnx

    from vasa_jax import losses, sharding
    from vasa_jax.models.vgg import make_perceptual
    from vasa_jax.train.face_latent import expression_target, make_steps

    cfg = _config("", supervise_other=True, expression_dims=4, expression_squared=True,
                  head_pose_scale_deg=(30.0, 22.0, 11.0), keypoint_landmarks=6,
                  **{"loss.head_pose": 1.0, "loss.head_position": 1.0, "loss.expression": 1.0,
                     "loss.keypoints": 1.0, "model.motion_keypoints": 10, **NO_GAN})
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    graphdefs, init, _, _ = build_state_fns(cfg, mesh)
    state = jax.jit(init)(jax.random.key(0))
    # A non-zero pose head, so that z_pose depends on the frame.
    head = state["gen"]["motion"]["pose_head"]
    head["kernel"] = 0.1 * jax.random.normal(jax.random.key(1), head["kernel"].shape)
    rng = np.random.default_rng(3)
    b, roles = 2, ("source", "driver", "other")
    batch = {r: rng.integers(0, 256, (b, 64, 64, 3), dtype=np.uint8) for r in roles}
    for r in roles:
        batch.update({f"{r}_rotation": rng.normal(0, 10, (b, 3)).astype(np.float32),
                      f"{r}_translation": rng.normal(0, 0.1, (b, 2)).astype(np.float32),
                      f"{r}_scale": rng.uniform(0.5, 0.7, (b,)).astype(np.float32),
                      f"{r}_mouth": rng.uniform(0, 1, (b, 3)).astype(np.float32),
                      f"{r}_blink": rng.uniform(0, 1, (b,)).astype(np.float32),
                      f"{r}_landmarks": rng.uniform(-0.5, 0.5, (b, len(synthtalk.LANDMARKS), 2)).astype(np.float32)})
    batch = jax.tree.map(jnp.asarray, batch)
    train_step, _ = make_steps(cfg, graphdefs, make_perceptual(None))
    _, metrics = jax.jit(train_step)(state, batch)

    gen = nnx.merge(graphdefs[0], state["gen"], state["gen_rest"])
    encode = jax.jit(lambda x: gen.motion(x.astype(jnp.float32) / 127.5 - 1.0,
                                          return_keypoints=True))
    codes = [encode(batch[r]) for r in roles]
    z_pose, z_dyn, keypoints = (jnp.concatenate([c[i] for c in codes]) for i in range(3))

    def truth(f):
        return jnp.concatenate([batch[f"{r}_{f}"] for r in roles])

    want = {
        "head_pose": losses.head_pose_loss(z_pose, truth("rotation"), (30.0, 22.0, 11.0)),
        "head_position": losses.head_position_loss(z_pose, truth("translation"), truth("scale")),
        "expression": losses.expression_loss(
            z_dyn, jnp.concatenate([expression_target(batch, r, 4) for r in roles]), squared=True),
        "keypoints": losses.keypoint_loss(keypoints, truth("landmarks")[:, :6]),
    }
    for name, value in want.items():
        assert float(metrics[name]) == pytest.approx(float(value), rel=1e-4), name
    # The source-and-driver-only value differs from the three-frame one.
    two = losses.head_pose_loss(z_pose[:2 * b], truth("rotation")[:2 * b], (30.0, 22.0, 11.0))
    assert abs(float(two) - float(metrics["head_pose"])) > 1e-3


def test_emotion_and_gaze_losses_anchor_the_next_components():
    """loss.emotion anchors one z_dyn component per emotion to the clip's one-hot and loss.gaze
    two to the eye-in-head angles mapped by EYE_GAZE_RANGE, packed after expression (and
    mouth_geometry when on); each term is zero at its target and moves by the squared error
    when one component is off; too small a z_dyn and data without the labels are refused."""
    from vasa_jax.errors import ConfigError
    from vasa_jax.train.face_latent import (EYE_GAZE_RANGE, NUM_EMOTIONS, anchor_layout,
                                            check_motion_losses, motion_terms, stage1_factors)

    onehot = np.eye(NUM_EMOTIONS, dtype=np.float32)[[1, 4]]
    eye_gaze = np.asarray([[10.0, -5.0], [-20.0, 12.0]], np.float32)
    gaze_target = np.stack([(eye_gaze[:, i] - lo) / span
                            for i, (lo, span) in enumerate(EYE_GAZE_RANGE)], -1)
    batch = {"source_mouth": jnp.zeros((2, 3)), "source_blink": jnp.zeros((2,)),
             "source_emotion_onehot": jnp.asarray(onehot), "source_eye_gaze": jnp.asarray(eye_gaze),
             "source_mouth_geometry": jnp.zeros((2, 2))}
    for geometry, emo_start in ((0.0, 4), (1.0, 6)):
        cfg = _config("", expression_dims=4, expression_squared=True,
                      **{"loss.expression": 1.0, "loss.mouth_geometry": geometry,
                         "loss.emotion": 1.0, "loss.gaze": 1.0, "model.dyn_dim": 16})
        layout = anchor_layout(cfg)
        assert layout["emotion"] == (emo_start, emo_start + NUM_EMOTIONS)
        assert layout["gaze"] == (emo_start + NUM_EMOTIONS, emo_start + NUM_EMOTIONS + 2)
        z = np.zeros((2, 16), np.float32)
        z[:, emo_start:emo_start + NUM_EMOTIONS] = onehot
        z[:, emo_start + NUM_EMOTIONS:emo_start + NUM_EMOTIONS + 2] = gaze_target
        terms = motion_terms(cfg, {"source": {"z_dyn": jnp.asarray(z)}}, batch)
        assert float(terms["emotion"]) == pytest.approx(0.0, abs=1e-10)
        assert float(terms["gaze"]) == pytest.approx(0.0, abs=1e-10)
        z[:, emo_start] += 0.1  # 0.01 over 2×5 values: mean 0.002, / unit 0.1 → 0.02
        z[:, emo_start + NUM_EMOTIONS + 1] -= 0.2  # 0.04 over 2×2 values: 0.02 / 0.1 → 0.2
        terms = motion_terms(cfg, {"source": {"z_dyn": jnp.asarray(z)}}, batch)
        assert float(terms["emotion"]) == pytest.approx(0.02, rel=1e-5)
        assert float(terms["gaze"]) == pytest.approx(0.2, rel=1e-5)
    record = {"identity": 0, "emotion": 0, "mouth": np.zeros((3, 3)), "blink": 0,
              "eye_gaze": np.zeros((3, 2)), "rotation": 0}
    cfg = _config("", expression_dims=4, **{"loss.expression": 1.0, "loss.emotion": 1.0,
                                            "loss.gaze": 1.0, "model.dyn_dim": 16})
    assert "emotion_onehot" in stage1_factors(cfg, record)
    check_motion_losses(cfg, record)
    with pytest.raises(ConfigError, match="loss.emotion needs each clip's emotion"):
        check_motion_losses(cfg, {k: v for k, v in record.items() if k != "emotion"})
    with pytest.raises(ConfigError, match="loss.gaze needs per-frame eye-in-head gaze"):
        check_motion_losses(cfg, {k: v for k, v in record.items() if k != "eye_gaze"})
    small = _config("", expression_dims=4,
                    **{"loss.expression": 1.0, "loss.emotion": 1.0, "model.dyn_dim": 8})
    with pytest.raises(ConfigError, match=r"loss.emotion anchors z_dyn\[:, 4:9\] but "
                                          r"model.dyn_dim=8"):
        check_motion_losses(small, record)


def test_mouth_geometry_loss_anchors_the_components_after_the_expression_values():
    """loss.mouth_geometry reads z_dyn[:, 4:6] when loss.expression anchors 4 values (else
    [:, :2]), against the (log half-width, half-opening) mapped by MOUTH_GEOMETRY_RANGE; a
    z_dyn too small for it is refused, and so is data that cannot give the geometry."""
    from vasa_jax.errors import ConfigError
    from vasa_jax.train.face_latent import (MOUTH_GEOMETRY_RANGE, check_motion_losses,
                                            motion_terms, stage1_factors)

    geometry = jnp.asarray([[-1.8, 0.06], [-1.5, 0.0]], jnp.float32)
    target = np.stack([(geometry[:, i] - lo) / span
                       for i, (lo, span) in enumerate(MOUTH_GEOMETRY_RANGE)], -1)
    batch = {"source_mouth_geometry": geometry}
    for expression, start in ((1.0, 4), (0.0, 0)):
        cfg = _config("", expression_dims=4, expression_squared=True,
                      **{"loss.mouth_geometry": 1.0, "loss.expression": expression})
        z = np.zeros((2, int(cfg.model.dyn_dim)), np.float32)
        z[:, start:start + 2] = target
        b = dict(batch, source_mouth=jnp.zeros((2, 3)), source_blink=jnp.zeros((2,)))
        terms = motion_terms(cfg, {"source": {"z_dyn": jnp.asarray(z)}}, b)
        assert float(terms["mouth_geometry"]) == pytest.approx(0.0, abs=1e-10)
        z[:, start] += 0.1  # squared error / unit 0.1 over the two components: 0.01 / 2 / 0.1
        terms = motion_terms(cfg, {"source": {"z_dyn": jnp.asarray(z)}}, b)
        assert float(terms["mouth_geometry"]) == pytest.approx(0.05, rel=1e-5)
    record = {"identity": 0, "emotion": 0, "mouth": np.zeros((3, 3)), "blink": 0, "rotation": 0}
    assert stage1_factors(cfg, record)[-1] == "mouth_geometry"
    assert "mouth_geometry" not in stage1_factors(_config(""), record)
    check_motion_losses(cfg, record)
    with pytest.raises(ConfigError, match="loss.mouth_geometry needs"):
        check_motion_losses(cfg, {"mouth": 0, "rotation": 0})
    small = _config("", **{"loss.mouth_geometry": 1.0, "loss.expression": 1.0,
                           "model.dyn_dim": 3}, expression_dims=2)
    with pytest.raises(ConfigError, match=r"z_dyn\[:, 2:4\] but model.dyn_dim=3"):
        check_motion_losses(small, record)
