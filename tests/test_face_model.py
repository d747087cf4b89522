"""Stage-1 face latent model: shapes, pose conventions, rigid-warp algebra, gradients, config errors."""
import importlib.util
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vasa_jax.data.synthtalk.motion import rotation_matrix
from vasa_jax.errors import ConfigError
from vasa_jax.models.face import (POSE_DIM, WarpGenerator, build_model, rotation_from_angles)
from vasa_jax.models.warp import bilinear_sample as warp_bilinear, identity_grid, trilinear_sample

_CONFIG_PATH = pathlib.Path(__file__).resolve().parents[1] / "configs" / "face_latent.py"


def _load_config(arg="tiny"):
    spec = importlib.util.spec_from_file_location("face_latent_config", _CONFIG_PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _make_test_model(**overrides):
    cfg = _load_config("tiny")
    cfg.model.update(overrides)
    return cfg.model, build_model(cfg.model, nnx.Rngs(0))


@pytest.fixture(scope="module")
def tiny():
    return _make_test_model()


def _images(key, b, s):
    return jax.random.uniform(key, (b, s, s, 3), minval=-1.0, maxval=1.0)


def test_output_shapes(tiny):
    cfg, model = tiny
    b, s = 2, cfg.image_size
    src, drv = _images(jax.random.key(0), b, s), _images(jax.random.key(1), b, s)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, src, drv):
        m = nnx.merge(graphdef, state)
        enc = m.encode(src)
        return enc, m(src, drv)

    enc, out = run(state, src, drv)
    vs = cfg.volume_size
    chex.assert_shape(enc["v_app"], (b, cfg.volume_depth, vs, vs, cfg.volume_channels))
    chex.assert_shape(enc["z_id"], (b, cfg.id_dim))
    chex.assert_shape(enc["z_pose"], (b, POSE_DIM))
    chex.assert_shape(enc["z_dyn"], (b, cfg.dyn_dim))
    chex.assert_shape(out, (b, s, s, 3))
    chex.assert_tree_all_finite((enc, out))
    assert float(jnp.max(jnp.abs(out))) <= 1.0
    grid = model.warp_s2c(enc["z_pose"], enc["z_dyn"], enc["z_id"])
    chex.assert_shape(grid, (b, cfg.volume_depth, vs, vs, 3))


def test_angles_bounded():
    cfg, model = _make_test_model()  # its own model: the weights are changed below
    graphdef, state = nnx.split(model)
    # The pose head starts at zero; give it large weights, and large-magnitude inputs, to push
    # the angles towards saturation.
    kernel = state["motion"]["pose_head"]["kernel"]
    kernel.set_value(100.0 * jax.random.normal(jax.random.key(7), kernel.shape))
    img = 50.0 * _images(jax.random.key(2), 4, cfg.image_size)
    z_pose, _ = jax.jit(lambda st, x: nnx.merge(graphdef, st).encode_motion(x))(state, img)
    assert float(jnp.max(jnp.abs(z_pose[:, :3]))) > 0.5 * cfg.max_angle_deg
    assert bool(jnp.all(jnp.abs(z_pose[:, :3]) <= cfg.max_angle_deg))


def test_training_starts_from_the_identity_warp(tiny):
    # Zero pose head: every image gets pose 0 (no rotation, translation or scaling), so both
    # rigid warps are the identity grid and the model starts as an autoencoder of the source.
    cfg, model = tiny
    img = _images(jax.random.key(8), 3, cfg.image_size)
    z_pose, _ = model.encode_motion(img)
    np.testing.assert_array_equal(np.asarray(z_pose), 0.0)
    ident = identity_grid(cfg.volume_depth, cfg.volume_size, cfg.volume_size)
    for warp in (model.warp_s2c, model.warp_c2d):
        np.testing.assert_allclose(warp.rigid(z_pose), jnp.broadcast_to(ident, (3, *ident.shape)),
                                   atol=1e-6)


@pytest.mark.parametrize("pool,stride", [("mean", 1), ("spatial", 1), ("mean", 2)])
def test_encoder_variants(pool, stride):
    # "mean" is what configs written before motion_pool existed mean; every stem stride keeps
    # the encoders' output shapes.
    cfg, model = _make_test_model(motion_pool=pool, stem_stride=stride)
    z_pose, z_dyn = model.encode_motion(_images(jax.random.key(9), 2, cfg.image_size))
    chex.assert_shape((z_pose, z_dyn), ((2, POSE_DIM), (2, cfg.dyn_dim)))
    assert hasattr(model.motion, "hidden") == (pool == "spatial")
    v = model.appearance(_images(jax.random.key(9), 2, cfg.image_size))
    chex.assert_shape(v, (2, cfg.volume_depth, cfg.volume_size, cfg.volume_size,
                          cfg.volume_channels))
    old = _load_config("tiny").model
    del old["motion_pool"], old["stem_stride"]
    assert build_model(old, nnx.Rngs(0)).motion.pool == "mean"


def test_motion_stem_stride_is_the_motion_encoders_own():
    """model.motion_stem_stride=1 with stem_stride=2: the motion encoder's first stage runs at
    full resolution (one more residual stage, same final map and code shapes) while the
    appearance encoder keeps stride 2; 0 (the default) follows stem_stride."""
    cfg, model = _make_test_model(stem_stride=2, motion_stem_stride=1)
    _, same = _make_test_model(stem_stride=2, motion_stem_stride=0)
    assert model.motion.trunk.stem.strides == 1 and model.appearance.stem.strides == 2
    assert same.motion.trunk.stem.strides == 2
    assert len(model.motion.trunk.blocks) == len(same.motion.trunk.blocks) + 1
    z_pose, z_dyn = model.encode_motion(_images(jax.random.key(11), 2, cfg.image_size))
    chex.assert_shape((z_pose, z_dyn), ((2, POSE_DIM), (2, cfg.dyn_dim)))


def test_motion_keypoints_find_a_peak_and_reach_both_heads():
    """model.motion_keypoints=K: K spatial-softmax heatmaps on a trunk stage. A single sharp
    peak in the stage map comes back as that cell's centre in [-1, 1] (x right, y down); the
    2K coordinates feed the hidden layer and both heads, so the codes' gradient reaches the
    heatmap conv; K=0 leaves the encoder as it was."""
    cfg, model = _make_test_model(motion_keypoints=4, motion_keypoint_stage=0)
    enc = model.motion
    assert enc.kp_stage == 0 and enc.kp_conv.out_features == 4
    c = enc.kp_conv.in_features
    kernel = np.zeros(enc.kp_conv.kernel.shape, np.float32)
    kernel[1, 1, 0, :] = 60.0  # every heatmap = 60 × channel 0 at the same cell
    enc.kp_conv.kernel[...] = jnp.asarray(kernel)
    enc.kp_conv.bias[...] = jnp.zeros_like(enc.kp_conv.bias[...])
    fmap = np.zeros((2, 8, 8, c), np.float32)
    fmap[0, 2, 5, 0] = fmap[1, 7, 0, 0] = 1.0
    kp = np.asarray(enc.keypoint_coords(jnp.asarray(fmap)))
    np.testing.assert_allclose(kp[0], np.tile([[5.5 / 4 - 1, 2.5 / 4 - 1]], (4, 1)), atol=1e-5)
    np.testing.assert_allclose(kp[1], np.tile([[0.5 / 4 - 1, 7.5 / 4 - 1]], (4, 1)), atol=1e-5)

    images = _images(jax.random.key(12), 2, cfg.image_size)
    z_pose, z_dyn = enc(images)
    chex.assert_shape((z_pose, z_dyn), ((2, POSE_DIM), (2, cfg.dyn_dim)))
    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)

    def loss(p):
        zp, zd = nnx.merge(graphdef, p, rest)(images)
        return jnp.sum(zd ** 2) + jnp.sum(zp)  # the pose head starts at zero: linear in it

    grads = jax.grad(loss)(params)
    assert optax_global_norm(grads["kp_conv"]) > 0.0
    for head in ("pose_head", "dyn_head"):  # the last 2K input rows are the coordinates
        assert optax_global_norm(grads[head]["kernel"][...][-8:]) > 0.0
    _, plain = _make_test_model()
    assert not hasattr(plain.motion, "kp_conv") and plain.motion.keypoints == 0
    with pytest.raises(ConfigError, match="motion_keypoint_stage"):
        _make_test_model(motion_keypoints=4, motion_keypoint_stage=len(enc.trunk.blocks))


def test_mouth_glimpse_samples_the_frame_around_the_mouth_keypoint():
    """model.motion_glimpse=G: a G×G patch centred on keypoint 3, its x axis along keypoint 0 →
    1 (the eyes) and its half-side motion_glimpse_span eye distances, so a turned or smaller
    head gives the same patch; its features reach z_dyn, and the codes' gradient does not flow
    into the keypoints through the patch's place. Bad settings are refused."""
    cfg, model = _make_test_model(motion_keypoints=4, motion_keypoint_stage=0, motion_glimpse=8,
                                  motion_glimpse_span=0.5)
    enc = model.motion
    s = cfg.image_size
    # A frame whose value is its own normalised x coordinate (x right, [-1, 1] at pixel edges).
    xs = (np.arange(s) + 0.5) / s * 2 - 1
    frame = np.broadcast_to(xs[None, :, None, None], (s, s, 1, 3)).reshape(1, s, s, 3)
    frame = jnp.asarray(np.concatenate([frame, frame]), jnp.float32)
    level = [[-0.3, -0.2], [0.3, -0.2], [0.0, 0.0], [0.1, 0.4]]  # eyes 0.6 apart, mouth at 0.1
    turned = [[0.1 - (y - 0.4), 0.4 + (x - 0.1)] for x, y in level]  # turned 90° about kp 3
    coords = jnp.asarray([level, turned], jnp.float32)
    grid = np.asarray(enc.glimpse_grid(coords))
    assert grid.shape == (2, 8, 8, 2)
    np.testing.assert_allclose(grid[0].mean((0, 1)), [0.1, 0.4], atol=1e-6)  # centred on kp 3
    t = (np.arange(8) + 0.5) / 8 * 2 - 1
    np.testing.assert_allclose(grid[0, 0, :, 0], 0.1 + 0.5 * 0.6 * t, atol=1e-6)  # along eyes
    np.testing.assert_allclose(grid[0, :, 0, 1], 0.4 + 0.5 * 0.6 * t, atol=1e-6)  # down
    np.testing.assert_allclose(grid[1, :, :, 1] - 0.4, grid[0, :, :, 0] - 0.1, atol=1e-6)
    patch = np.asarray(warp_bilinear(frame, enc.glimpse_grid(coords)))
    np.testing.assert_allclose(patch[0, 3, :, 0], grid[0, 3, :, 0], atol=1e-5)  # reads x there

    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
    images = _images(jax.random.key(13), 2, s)

    def dyn(p, img):
        return nnx.merge(graphdef, p, rest)(img)[1]

    grads = jax.grad(lambda p: jnp.sum(dyn(p, images) ** 2))(params)
    assert optax_global_norm(grads["glimpse_convs"]) > 0.0
    # Through the patch alone (the trunk's path cut), nothing reaches the keypoint conv.
    _, fmap = enc.trunk(images, tap=enc.kp_stage)

    def through_patch(p):
        e = nnx.merge(graphdef, p, rest)
        return jnp.sum(e.glimpse_features(images, e.keypoint_coords(fmap)) ** 2)

    g = jax.grad(through_patch)(params)
    assert optax_global_norm(g["kp_conv"]) == 0.0 and optax_global_norm(g["glimpse_out"]) > 0
    # align "frame": the frame's own axes and units, whatever the eyes do.
    _, framed = _make_test_model(motion_keypoints=4, motion_keypoint_stage=0, motion_glimpse=8,
                                 motion_glimpse_span=0.25, motion_glimpse_align="frame")
    g = np.asarray(framed.motion.glimpse_grid(coords))
    np.testing.assert_allclose(g[0], g[1], atol=1e-6)
    np.testing.assert_allclose(g[0, 0, :, 0], 0.1 + 0.25 * t, atol=1e-6)
    for bad in (dict(motion_keypoints=4, motion_glimpse=8, motion_glimpse_align="mouth"),
                dict(motion_keypoints=2, motion_glimpse=8),
                dict(motion_keypoints=4, motion_glimpse=10),
                dict(motion_keypoints=4, motion_glimpse=8, motion_glimpse_span=0.0)):
        with pytest.raises(ConfigError, match="motion_glimpse"):
            _make_test_model(motion_keypoint_stage=0, **bad)


def test_input_size_feeds_the_motion_encoder_the_larger_frame():
    """model.input_size = 2·image_size: the motion encoder reads the frame at input size (one
    more downsampling, same code shapes), the other encoders and the decoder work at image_size
    on the frame's 2×2 box filter. The appearance pieces of a 2× frame equal those of its box
    filter fed to a model without input_size (same weights), while the motion codes see detail
    that the box filter removes."""
    cfg, model = _make_test_model(input_size=128, motion_stem_stride=2)
    s = cfg.image_size
    big = _images(jax.random.key(21), 2, 2 * s)
    small = big.reshape(2, s, 2, s, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(model.output_view(big), small, atol=1e-6)
    enc = model.encode(big)
    chex.assert_shape((enc["z_pose"], enc["z_dyn"]), ((2, POSE_DIM), (2, cfg.dyn_dim)))
    assert model.motion.trunk.stem.strides == 2 and len(model.motion.trunk.blocks) == 3
    # Stride 1 on the small frame: the same layers, so every parameter has the same shape.
    _, plain = _make_test_model(motion_stem_stride=1)
    nnx.update(plain, nnx.state(model))
    ref = plain.encode(small)
    for k in ("v_app", "z_id"):
        np.testing.assert_allclose(enc[k], ref[k], rtol=1e-5, atol=1e-5)
    # Detail finer than the box filter (a ±checkerboard, which it averages away) moves the
    # motion codes but not the appearance.
    checker = 0.3 * (-1.0) ** (jnp.arange(2 * s)[:, None] + jnp.arange(2 * s)[None, :])
    moved = model.encode(big + checker[None, :, :, None])
    assert float(jnp.max(jnp.abs(moved["z_dyn"] - enc["z_dyn"]))) > 1e-3
    np.testing.assert_allclose(moved["v_app"], enc["v_app"], rtol=1e-4, atol=1e-4)
    chex.assert_shape(model(big, big), (2, s, s, 3))
    with pytest.raises(AssertionError):  # frames at image_size are the wrong input now
        model.encode(small)


@pytest.mark.parametrize("value", [96, 32, -64])
def test_bad_input_size_names_the_field(value):
    with pytest.raises(ConfigError, match="input_size"):
        _make_test_model(input_size=value)


def test_group_norms_keep_several_channels_per_group():
    from vasa_jax.models.layers import num_groups
    assert [num_groups(c) for c in (8, 16, 32, 64, 128, 512, 6)] == [2, 4, 8, 16, 32, 32, 1]
    _, model = _make_test_model()
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.GroupNorm):
            assert node.group_size >= 4 or node.num_groups == 1, path


def test_rotation_matches_synthtalk():
    rng = np.random.default_rng(0)
    yaw, pitch, roll = rng.uniform(-90, 90, (3, 16))
    got = rotation_from_angles(jnp.asarray(yaw), jnp.asarray(pitch), jnp.asarray(roll))
    np.testing.assert_allclose(np.asarray(got), rotation_matrix(yaw, pitch, roll), atol=1e-5)


def test_rigid_warps_compose_to_identity(tiny):
    cfg, _ = tiny
    s2c = WarpGenerator(cfg, "source_to_canonical", rngs=nnx.Rngs(1))
    c2d = WarpGenerator(cfg, "canonical_to_driver", rngs=nnx.Rngs(2))
    b = 3
    k = jax.random.split(jax.random.key(3), 3)
    pose = jnp.concatenate([
        jax.random.uniform(k[0], (b, 3), minval=-20.0, maxval=20.0),
        jax.random.uniform(k[1], (b, 3), minval=-0.1, maxval=0.1),
        jax.random.uniform(k[2], (b, 1), minval=-0.1, maxval=0.1)], axis=-1)
    z_dyn, z_id = jnp.ones((b, cfg.dyn_dim)), jnp.ones((b, cfg.id_dim))
    # Zero-initialised flow head: the full warp equals the rigid warp at init.
    g_sc, g_cd = s2c(pose, z_dyn, z_id), c2d(pose, z_dyn, z_id)
    np.testing.assert_allclose(g_sc, s2c.rigid(pose), atol=1e-6)
    # Composition = the s→c grid (a linear field, so trilinear interpolation is exact inside the
    # volume) read at the c→d grid; it must map every point back to itself.
    composed = trilinear_sample(g_sc, g_cd, padding_mode="border")
    ident = jnp.broadcast_to(identity_grid(*g_sc.shape[1:4]), g_sc.shape)
    inside = jnp.all(jnp.abs(g_cd) <= 0.75, axis=-1)  # away from the border
    assert float(inside.mean()) > 0.2
    err = jnp.where(inside[..., None], jnp.abs(composed - ident), 0.0)
    assert float(err.max()) < 1e-4


def test_gradients_reach_every_module(tiny):
    cfg, model = tiny
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    src = _images(jax.random.key(4), 2, cfg.image_size)
    drv = _images(jax.random.key(5), 2, cfg.image_size)

    @jax.jit
    def loss_and_grad(params, rest, src, drv):
        def loss_fn(p):
            out = nnx.merge(graphdef, p, rest)(src, drv)
            return jnp.mean(jnp.abs(out - drv))
        return jax.value_and_grad(loss_fn)(params)

    loss, grads = loss_and_grad(params, rest, src, drv)
    assert np.isfinite(float(loss))
    for name in ("appearance", "motion", "warp_s2c", "warp_c2d", "decoder"):
        assert optax_global_norm(grads[name]) > 0.0, f"zero gradient for {name}"
    # The pose head gets gradient through the rigid warp.
    assert optax_global_norm(grads["motion"]["pose_head"]) > 0.0
    # z_id only enters the warp generators, whose flow convs start at zero (rigid warp at
    # init), so the identity encoder's gradient is exactly zero until they move. Give them
    # small weights (as after a first update) and reuse the compiled function.
    for warp in ("warp_s2c", "warp_c2d"):
        kernel = params[warp]["to_flow"]["kernel"]
        kernel.set_value(1e-2 * jax.random.normal(jax.random.key(6), kernel.shape))
    _, grads = loss_and_grad(params, rest, src, drv)
    assert optax_global_norm(grads["identity"]) > 0.0, "zero gradient for identity"
    assert optax_global_norm(grads["warp_s2c"]["seed"]) > 0.0


def optax_global_norm(tree) -> float:
    return float(jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))))


@pytest.mark.parametrize("field,value", [
    ("image_size", 100),
    ("volume_depth", 3),
    ("id_dim", 0),
    ("max_angle_deg", 0.0),
    ("encoder_downsamples", 7),
    ("stem_stride", 3),
    ("motion_stem_stride", 3),
    ("motion_pool", "max"),
    ("motion_keypoints", -1),
    ("decoder_cond", "id"),
])
def test_bad_config_names_field(field, value):
    with pytest.raises(ConfigError, match=field):  # abstract: some fields are checked late
        nnx.eval_shape(lambda: _make_test_model(**{field: value}))


def test_vox512_config_is_valid():
    from vasa_jax.models.face import check_model_config
    cfg = _load_config("vox512")
    assert check_model_config(cfg.model) == 3  # 512 → 64
    for key in ("l1", "perceptual", "gan", "feature_matching", "consist", "cross_id"):
        assert key in cfg.loss


def test_tiny_guided_config_builds_its_model():
    """The documented recipe's model: the skip with both copies and a full-resolution motion
    stem; its losses include the head-position and four-value expression supervision, and most
    drivers come from another clip of the source's identity; 1,536 train identities, all of
    whose decoded clips fit the clip cache."""
    cfg = _load_config("tiny_guided")
    # Abstract (shapes only): building and running it eagerly took ~25 s of the suite, and the
    # numerics of these modules are tested at tiny size elsewhere.
    model = nnx.eval_shape(lambda: build_model(cfg.model, nnx.Rngs(0)))
    assert model.decoder.blend and model.decoder.static and model.skip == 16
    # The motion encoder reads 128² frames through a stride-2 stem; the rest works at 64².
    assert cfg.model.input_size == cfg.data.synthtalk.resolution == 2 * cfg.model.image_size
    assert model.motion.trunk.stem.strides == 2 and model.appearance.stem.strides == 2
    assert len(model.motion.trunk.blocks) == 3
    # 16 keypoints on the 32² stage, the first four guided to the landmarks.
    assert model.motion.keypoints == 16 and model.motion.kp_stage == 0
    assert cfg.loss.keypoints > 0 and cfg.keypoint_landmarks == 4
    assert _load_config("tiny_run").loss.keypoints == 0
    # Head-pose units by each angle's spread: a degree of roll costs most, yaw least.
    yaw, pitch, roll = cfg.head_pose_scale_deg
    assert roll < pitch < yaw
    assert tuple(_load_config("tiny_run").head_pose_scale_deg) == (30.0, 30.0, 30.0)
    assert _load_config("tiny_run").model.motion_keypoints == 0
    assert cfg.loss.head_position > 0 and cfg.loss.expression > 0 and cfg.expression_dims == 4
    assert 0 < cfg.data.cross_clip_prob < 1 and cfg.supervise_other
    # Four times tiny_run's identities, without changing the table the other variants share.
    st = cfg.data.synthtalk
    assert st.num_train_identities == 1536
    # The cache holds every decoded training clip, so no clip is decoded twice in a run.
    clips = st.num_train_identities * st.clips_per_identity
    decoded = clips * st.num_frames * st.resolution ** 2 * 3
    assert cfg.data.cache_mb * 2 ** 20 >= decoded
    assert _load_config("tiny_run").data.synthtalk.num_train_identities == 384
    assert _load_config("tiny_run").data.synthtalk.resolution == 64
    graphdef, state = nnx.split(model)
    frames = jax.ShapeDtypeStruct((1, cfg.model.input_size, cfg.model.input_size, 3), jnp.float32)
    out = jax.eval_shape(lambda st, a, b: nnx.merge(graphdef, st)(a, b), state, frames, frames)
    chex.assert_shape(out, (1, cfg.model.image_size, cfg.model.image_size, 3))


def test_cached_canonical_volume_decodes_the_same(tiny):
    """Generation warps the portrait to the canonical volume once; frames then need only the
    canonical → driver warp. Same images as the full decode."""
    cfg, model = tiny
    src, drv = _images(jax.random.key(2), 2, cfg.image_size), _images(jax.random.key(3), 2,
                                                                        cfg.image_size)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, src, drv):
        m = nnx.merge(graphdef, state)
        e, d = m.encode(src), m.encode(drv)
        full = m.decode(e["v_app"], e["z_id"], e["z_pose"], e["z_dyn"], d["z_pose"], d["z_dyn"])
        v_can = m.to_canonical(e["v_app"], e["z_id"], e["z_pose"], e["z_dyn"])
        return full, m.decode_canonical(v_can, e["z_id"], d["z_pose"], d["z_dyn"])

    full, cached = run(state, src, drv)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=0, atol=1e-6)


def test_decoder_conditioned_on_z_dyn():
    """decoder_cond="dyn": the driver's z_dyn reaches the pixels through the decoder too. At
    initialisation the flow is zero, so with "none" z_dyn cannot change the image at all."""
    outs = {}
    for cond in ("none", "dyn"):
        cfg, model = _make_test_model(decoder_cond=cond)
        e = model.encode(_images(jax.random.key(4), 1, cfg.image_size))
        dyn2 = e["z_dyn"] + 3.0
        a = model.decode(e["v_app"], e["z_id"], e["z_pose"], e["z_dyn"], e["z_pose"], e["z_dyn"])
        b = model.decode(e["v_app"], e["z_id"], e["z_pose"], e["z_dyn"], e["z_pose"], dyn2)
        v_can = model.to_canonical(e["v_app"], e["z_id"], e["z_pose"], e["z_dyn"])
        c = model.decode_canonical(v_can, e["z_id"], e["z_pose"], dyn2)
        np.testing.assert_allclose(np.asarray(c), np.asarray(b), atol=1e-6)
        outs[cond] = float(jnp.abs(a - b).max())
    assert outs["none"] < 1e-6 and outs["dyn"] > 1e-3, outs


def test_source_skip_cached_decode_and_missing_features():
    """model.skip_channels > 0: encode returns f_src; the cached path (v_can and g_s2c from
    to_canonical) renders the same images as the full decode; leaving f_src out is a one-line
    ConfigError, not a shape error deep in the decoder."""
    cfg, model = _make_test_model(skip_channels=8, decoder_cond="dyn")
    src, drv = _images(jax.random.key(5), 2, cfg.image_size), _images(jax.random.key(6), 2,
                                                                        cfg.image_size)
    e, d = model.encode(src), model.encode(drv)
    chex.assert_shape(e["f_src"], (2, cfg.image_size, cfg.image_size, 8))
    full = model.decode_latents(e, d["z_pose"], d["z_dyn"])
    v_can, g_s2c = model.to_canonical(e["v_app"], e["z_id"], e["z_pose"], e["z_dyn"],
                                      return_grid=True)
    cached = model.decode_canonical(v_can, e["z_id"], d["z_pose"], d["z_dyn"],
                                    f_src=e["f_src"], g_s2c=g_s2c)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), rtol=0, atol=1e-6)
    # The skip changes the image: other source features, other pixels.
    other = model.decode(e["v_app"], e["z_id"], e["z_pose"], e["z_dyn"], d["z_pose"],
                         d["z_dyn"], f_src=e["f_src"][::-1])
    assert float(jnp.abs(other - full).max()) > 1e-3
    with pytest.raises(ConfigError, match="skip"):
        model.decode(e["v_app"], e["z_id"], e["z_pose"], e["z_dyn"], d["z_pose"], d["z_dyn"])
    with pytest.raises(ConfigError, match="skip_channels"):
        _make_test_model(skip_channels=-1)


def test_source_skip_follows_the_warp_geometry():
    """The skip samples f_src where each driver pixel comes from: with source positions equal
    to the volume's own grid it returns f_src, and with the grid moved by 4 image pixels along
    x (a head translated by -4 px) the features move with it, away from the border where the
    16² → 64² flow is clamped. Any depth weights give this, since all depths agree."""
    cfg, model = _make_test_model(skip_channels=8)
    dec = model.decoder
    s, vs, d = cfg.image_size, cfg.volume_size, cfg.volume_depth
    f_src = jax.random.normal(jax.random.key(7), (2, s, s, 8))
    x = jax.random.normal(jax.random.key(8), (2, vs, vs, cfg.decoder_channels))
    grid = jnp.broadcast_to(identity_grid(d, vs, vs), (2, d, vs, vs, 3))
    same = dec.skip_features(x, (f_src, grid))
    np.testing.assert_allclose(np.asarray(same[:, 4:-4, 4:-4]), np.asarray(f_src[:, 4:-4, 4:-4]),
                               atol=1e-5)
    moved = dec.skip_features(x, (f_src, grid + jnp.array([8.0 / s, 0.0, 0.0])))
    np.testing.assert_allclose(np.asarray(moved[:, 6:-6, 6:-10]),
                               np.asarray(f_src[:, 6:-6, 10:-6]), atol=1e-5)


def test_source_skip_blend_passes_the_source_through():
    """model.skip_blend: out = m·warp(source) + (1 − m)·drawn. At initialisation both warps are
    the identity (zero pose head, zero flows), so with the mask forced open the reconstruction
    of a frame from itself is the frame, away from the border where the flow is clamped."""
    cfg, model = _make_test_model(skip_channels=4, skip_blend=True)
    img = _images(jax.random.key(9), 2, cfg.image_size)
    e = model.encode(img)
    assert e["f_src"].shape[-1] == 3 + 4
    np.testing.assert_array_equal(np.asarray(e["z_pose"]), 0.0)
    bias = model.decoder.to_rgb.bias
    bias[...] = bias[...].at[3].set(50.0)   # mask logit: sigmoid(50) = 1 in float32
    out = model.decode_latents(e, e["z_pose"], e["z_dyn"])
    np.testing.assert_allclose(np.asarray(out[:, 4:-4, 4:-4]), np.asarray(img[:, 4:-4, 4:-4]),
                               atol=1e-5)
    bias[...] = bias[...].at[3].set(-50.0)  # mask shut: only what the decoder draws (in tanh)
    drawn = model.decode_latents(e, e["z_pose"], e["z_dyn"])
    assert float(jnp.abs(drawn - out).max()) > 1e-2 and float(jnp.abs(drawn).max()) < 1.0
    with pytest.raises(ConfigError, match="skip_blend"):
        _make_test_model(skip_blend=True)


def test_source_skip_static_copies_the_portrait_where_it_is():
    """model.skip_static: the unwarped source is a third choice of the blend. With its logit
    forced up, a driver pose that turns and moves the head still gives the source image back
    unchanged (a fixed background stays put), while the warped copy alone moves with the head;
    with the logit forced down the output is the two-way blend, so the static copy is what
    changed it. skip_static without skip_blend is a one-line ConfigError."""
    cfg, model = _make_test_model(skip_channels=4, skip_blend=True, skip_static=True)
    img = _images(jax.random.key(10), 2, cfg.image_size)
    e = model.encode(img)
    drv_pose = e["z_pose"] + jnp.array([20.0, 0.0, 10.0, 0.25, -0.1, 0.0, 0.2])
    bias = model.decoder.to_rgb.bias
    assert bias.shape == (3 + 2,)
    bias[...] = bias[...].at[4].set(50.0)   # static logit: softmax weight 1 in float32
    static = model.decode_latents(e, drv_pose, e["z_dyn"])
    np.testing.assert_allclose(np.asarray(static), np.asarray(img), atol=1e-5)
    bias[...] = bias[...].at[4].set(-50.0).at[3].set(50.0)  # only the warped copy
    warped = model.decode_latents(e, drv_pose, e["z_dyn"])
    assert float(jnp.abs(warped - img).mean()) > 0.05
    with pytest.raises(ConfigError, match="skip_static"):
        _make_test_model(skip_channels=4, skip_static=True)
