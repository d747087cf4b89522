"""Discriminator, identity net and losses: shapes, exact values, gradients, torch parity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from vasa_jax import losses as L
from vasa_jax.models import discriminator as D
from vasa_jax.models import identity_net as I


def _make_disc(**overrides):
    cfg = dict(num_scales=3, base_channels=8, num_layers=3, max_channels=32, norm="group",
               num_groups=4)
    cfg.update(overrides)
    return D.MultiScaleDiscriminator(**cfg, rngs=nnx.Rngs(0))


def _conv_out(n, stride, pad=2, k=4):
    return (n + 2 * pad - k) // stride + 1


def _images(key, shape=(2, 32, 32, 3)):
    return jax.random.uniform(jax.random.key(key), shape, minval=-1.0, maxval=1.0)


# ---- discriminator -------------------------------------------------------------------------

@pytest.mark.parametrize("num_scales,num_layers", [(3, 3), (2, 2)])
def test_multiscale_shapes(num_scales, num_layers):
    graphdef, state = nnx.split(_make_disc(num_scales=num_scales, num_layers=num_layers))
    feats, logits = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                                   jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert len(feats) == len(logits) == num_scales
    size = 32
    for s in range(num_scales):
        assert len(feats[s]) == num_layers + 1
        n = size
        for k, f in enumerate(feats[s]):
            n = _conv_out(n, 2 if k < num_layers else 1)
            assert f.shape == (2, n, n, min(8 * 2 ** k, 32))
        assert logits[s].shape == (2, _conv_out(n, 1), _conv_out(n, 1), 1)
        size = (size + 1) // 2


def test_downsample_matches_torch_avgpool():
    x = np.array(_images(1, (2, 15, 16, 3)))
    ref = torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)(
        torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(D.downsample_avg(jnp.asarray(x))), ref, atol=1e-6)


def _torch_patch_disc(disc: D.PatchDiscriminator, num_groups: int) -> torch.nn.Sequential:
    """Plain-torch NLayerDiscriminator with the JAX module's weights copied in."""
    layers = []
    for (cin, cout, stride, normed), conv, norm in zip(disc.specs, disc.convs, disc.norms):
        tconv = torch.nn.Conv2d(cin, cout, 4, stride=stride, padding=2)
        tconv.weight.data = torch.from_numpy(np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1).copy())
        tconv.bias.data = torch.from_numpy(np.asarray(conv.bias[...]).copy())
        layers.append(tconv)
        if normed:
            tnorm = torch.nn.GroupNorm(min(num_groups, cout), cout, eps=1e-5)
            tnorm.weight.data = torch.from_numpy(np.asarray(norm.scale[...]).copy())
            tnorm.bias.data = torch.from_numpy(np.asarray(norm.bias[...]).copy())
            layers.append(tnorm)
        layers.append(torch.nn.LeakyReLU(0.2))
    final = torch.nn.Conv2d(disc.specs[-1][1], 1, 4, stride=1, padding=2)
    final.weight.data = torch.from_numpy(np.asarray(disc.final.kernel[...]).transpose(3, 2, 0, 1).copy())
    final.bias.data = torch.from_numpy(np.asarray(disc.final.bias[...]).copy())
    layers.append(final)
    return torch.nn.Sequential(*layers).eval()


@pytest.mark.parametrize("norm", ["none", "group"])
def test_patch_discriminator_torch_parity(norm):
    disc = D.PatchDiscriminator(base_channels=8, num_layers=3, max_channels=32, norm=norm,
                                num_groups=4, rngs=nnx.Rngs(3))
    # Random, non-trivial norm parameters so the GroupNorm affine is exercised.
    for m in disc.norms:
        if m is not None:
            m.scale[...] = 1.0 + 0.3 * jax.random.normal(jax.random.key(5), m.scale.shape)
            m.bias[...] = 0.2 * jax.random.normal(jax.random.key(6), m.bias.shape)
    x = np.array(_images(2, (2, 32, 32, 3)))
    _, logits = disc(jnp.asarray(x))
    with torch.no_grad():
        ref = _torch_patch_disc(disc, 4)(torch.from_numpy(x).permute(0, 3, 1, 2))
    ref = ref.permute(0, 2, 3, 1).numpy()
    got = np.asarray(logits)
    assert got.shape == ref.shape
    rel = np.max(np.abs(got - ref)) / np.max(np.abs(ref))
    assert rel <= 1e-4, rel


def test_gan_losses_grads_finite_under_jit():
    disc = _make_disc(num_scales=2, num_layers=2)
    graphdef, state = nnx.split(disc)
    real, fake = _images(3, (2, 16, 16, 3)), _images(4, (2, 16, 16, 3))

    @jax.jit
    def grads(state, real, fake):
        def d_loss(state):
            m = nnx.merge(graphdef, state)
            return L.hinge_d_loss(m(real)[1], m(fake)[1])

        def g_loss(fake):
            m = nnx.merge(graphdef, state)
            real_feats, _ = m(real)
            fake_feats, fake_logits = m(fake)
            return L.hinge_g_loss(fake_logits) + L.feature_matching_loss(real_feats, fake_feats)

        return jax.value_and_grad(d_loss)(state), jax.value_and_grad(g_loss)(fake)

    (ld, gd), (lg, gg) = grads(state, real, fake)
    assert np.isfinite(float(ld)) and np.isfinite(float(lg))
    leaves = jax.tree.leaves(gd) + [gg]
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert float(jnp.sum(jnp.abs(gg))) > 0.0


# ---- exact loss values -----------------------------------------------------------------------

def test_hinge_losses_known_values():
    shapes = [(2, 5, 5, 1), (2, 3, 3, 1)]
    full = lambda v: [jnp.full(s, v) for s in shapes]  # noqa: E731
    assert float(L.hinge_d_loss(full(2.0), full(-2.0))) == 0.0
    assert float(L.hinge_d_loss(full(0.0), full(0.0))) == 2.0
    assert float(L.hinge_g_loss(full(0.0))) == 0.0
    assert float(L.hinge_g_loss(full(-2.0))) == 2.0
    # Per scale: relu(1-0.5)=0.5 + relu(1+0.5)=1.5 -> 2.0; relu(1-3)=0 + relu(1-3)=0 -> 0.
    d = L.hinge_d_loss([jnp.full(shapes[0], 0.5), jnp.full(shapes[1], 3.0)],
                       [jnp.full(shapes[0], 0.5), jnp.full(shapes[1], -3.0)])
    np.testing.assert_allclose(float(d), 1.0)


def test_feature_matching_known_values():
    feats = [[_images(k, (2, 4, 4, c)) for k, c in enumerate((3, 5))] for _ in range(2)]
    assert float(L.feature_matching_loss(feats, feats)) == 0.0
    shifted = [[f + 0.25 for f in scale] for scale in feats]
    np.testing.assert_allclose(float(L.feature_matching_loss(feats, shifted)), 0.25, rtol=1e-6)
    # Real features get no gradient.
    g = jax.grad(lambda r: L.feature_matching_loss(r, shifted))(feats)
    assert all(float(jnp.sum(jnp.abs(x))) == 0.0 for x in jax.tree.leaves(g))


def _encoding(seed, b=2):
    k = jax.random.split(jax.random.key(seed), 4)
    return dict(v_app=jax.random.normal(k[0], (b, 4, 4, 4, 2)), z_id=jax.random.normal(k[1], (b, 8)),
                z_pose=jax.random.normal(k[2], (b, 6)), z_dyn=jax.random.normal(k[3], (b, 8)))


def test_consistency_loss():
    enc_i, enc_j = _encoding(0), _encoding(1)

    def motion_only(v_app, z_id, pose_src, dyn_src, pose_drv, dyn_drv):
        return jnp.tanh(pose_drv[:, :1, None] + dyn_drv[:, None, :4])[..., None] * jnp.ones(3)

    assert float(L.consistency_loss(motion_only, enc_i, enc_j)) == 0.0

    def with_app(v_app, z_id, pose_src, dyn_src, pose_drv, dyn_drv):
        return motion_only(v_app, z_id, pose_src, dyn_src, pose_drv, dyn_drv) + jnp.mean(v_app)

    assert float(L.consistency_loss(with_app, enc_i, enc_j)) > 0.0
    assert float(L.consistency_loss(with_app, enc_i, enc_i)) == 0.0

    # The argument routing: record what each call received.
    calls = []
    L.consistency_loss(lambda *a: calls.append(a) or jnp.zeros((2, 1, 1, 3)), enc_i, enc_j)
    (first, second) = calls
    expect_first = (enc_j["v_app"], enc_j["z_id"], enc_j["z_pose"], enc_j["z_dyn"],
                    enc_i["z_pose"], enc_j["z_dyn"])
    expect_second = (enc_i["v_app"], enc_i["z_id"], enc_i["z_pose"], enc_i["z_dyn"],
                     enc_i["z_pose"], enc_j["z_dyn"])
    for got, want in zip(first + second, expect_first + expect_second):
        assert got is want


def test_cross_identity_loss():
    net = I.IdentityNet(dim=16, channels=(8, 16), rngs=nnx.Rngs(0))
    id_fn = I.make_identity_fn(*nnx.split(net))
    x = _images(5)
    np.testing.assert_allclose(float(L.cross_identity_loss(id_fn, x, x)), 0.0, atol=1e-6)

    # Embedding = mean colour; source (1, 0, 0) vs cross (1, 1, 0): cos = 1 / sqrt(2).
    colour_fn = lambda im: jnp.mean(im, axis=(1, 2))  # noqa: E731
    src = jnp.broadcast_to(jnp.array([1.0, 0.0, 0.0]), (2, 4, 4, 3))
    cross = jnp.broadcast_to(jnp.array([1.0, 1.0, 0.0]), (2, 4, 4, 3))
    np.testing.assert_allclose(float(L.cross_identity_loss(colour_fn, src, cross)),
                               1.0 - 1.0 / np.sqrt(2.0), rtol=1e-6)


def test_motion_contrastive_aligned_lower_than_shuffled():
    z = jax.random.normal(jax.random.key(7), (8, 16))
    z_b = z + 0.05 * jax.random.normal(jax.random.key(8), z.shape)
    aligned = float(L.motion_contrastive_loss(z, z_b, 0.1))
    shuffled = float(L.motion_contrastive_loss(z, jnp.roll(z_b, 1, axis=0), 0.1))
    assert aligned < shuffled
    assert aligned < np.log(8)


def test_total_generator_loss():
    terms = dict(l1=jnp.array(2.0), gan=jnp.array(3.0), fm=jnp.array(5.0))
    total, weighted = L.total_generator_loss(terms, dict(l1=1.0, gan=0.5, fm=0.0))
    np.testing.assert_allclose(float(total), 3.5)
    assert set(weighted) == {"l1", "gan"}
    with pytest.raises(KeyError):
        L.total_generator_loss(terms, dict(missing=1.0))
    np.testing.assert_allclose(float(L.l1_loss(jnp.zeros(4), jnp.full(4, -2.0))), 2.0)


# ---- identity net ----------------------------------------------------------------------------

def test_identity_net_unit_norm_and_arcface():
    net = I.IdentityNet(dim=32, channels=(8, 16, 32), rngs=nnx.Rngs(1))
    emb = net(_images(9, (4, 32, 32, 3)))
    assert emb.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-5)

    head = I.ArcFaceHead(32, 5, rngs=nnx.Rngs(2))
    cos = head.cosines(emb)
    assert cos.shape == (4, 5) and float(jnp.max(jnp.abs(cos))) <= 1.0 + 1e-6
    labels = jnp.array([0, 1, 2, 3])
    logits = I.identity_logits(cos, labels, margin=0.5, scale=10.0)
    # The margin lowers only the true-class logit.
    onehot = np.eye(5, dtype=bool)[np.asarray(labels)]
    assert np.all(np.asarray(logits)[onehot] < 10.0 * np.asarray(cos)[onehot])
    np.testing.assert_allclose(np.asarray(logits)[~onehot], 10.0 * np.asarray(cos)[~onehot], rtol=1e-6)
    assert np.isfinite(float(I.arcface_loss(net, head, _images(9, (4, 32, 32, 3)), labels)))


def test_head_pose_loss_known_value():
    import jax.numpy as jnp

    from vasa_jax.losses import head_pose_loss

    z = jnp.zeros((2, 7)).at[:, :3].set(jnp.asarray([[30.0, 0.0, 0.0], [0.0, -15.0, 15.0]]))
    truth = jnp.zeros((2, 3))
    # mean |Δ| over 6 angles = (30 + 15 + 15) / 6 = 10°, divided by the 30° scale.
    assert float(head_pose_loss(z, truth)) == pytest.approx(10.0 / 30.0)
    assert float(head_pose_loss(z, z[:, :3])) == 0.0
    with pytest.raises(ValueError, match="head_pose_loss"):
        head_pose_loss(z, truth[:1])
    # One scale per angle: yaw errs 30 and 0 (/ 40), pitch 0 and 15 (/ 30), roll 0 and 15 (/ 10).
    expect = (30.0 / 40.0 + 15.0 / 30.0 + 15.0 / 10.0) / 6.0
    assert float(head_pose_loss(z, truth, (40.0, 30.0, 10.0))) == pytest.approx(expect)
    assert float(head_pose_loss(z, truth, (30.0, 30.0, 30.0))) == pytest.approx(10.0 / 30.0)


def test_region_l1_loss_sees_only_errors_under_its_window():
    # An error patch at the landmark counts fully; the same patch far away barely counts.
    h = w = 64
    target = jnp.zeros((2, h, w, 3))
    pred = target.at[0, 40:44, 20:24].set(1.0).at[1, 4:8, 56:60].set(1.0)
    # Landmark at the centre of image 0's patch (pixel 22, 42 → normalised coordinates).
    lm = jnp.asarray([[[(22 + 0.0) / w * 2 - 1, (42 + 0.0) / h * 2 - 1]]] * 2)
    sigma = jnp.full((2,), 2.0 / w * 2)  # 2 pixels
    near = float(L.region_l1_loss(pred[:1], target[:1], lm[:1], sigma[:1]))
    far = float(L.region_l1_loss(pred[1:], target[1:], lm[1:], sigma[1:]))
    assert near > 0.4 and far < 1e-6  # a 4×4 patch holds about half of a σ = 2 px window
    # The window is normalised: a uniform error of 0.25 gives 0.25 wherever the landmark is.
    np.testing.assert_allclose(
        float(L.region_l1_loss(target + 0.25, target, lm * 0.3, sigma)), 0.25, rtol=1e-5)
    # Known map: the weight is exp(-d²/2σ²) of the pixel centre's distance.
    wmap = L.landmark_weight_map(lm[:1], h, w, sigma[:1])
    np.testing.assert_allclose(float(wmap[0, 42, 22]), np.exp(-2 * (0.5 / w * 2) ** 2
                                                               / (2 * float(sigma[0]) ** 2)),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="region_l1_loss"):
        L.region_l1_loss(pred, target, lm[:1], sigma)


def test_facial_region_losses_scale_with_the_face():
    # Mouth and eye windows follow the landmarks; sigma is a fraction of the eye distance.
    target = jnp.zeros((1, 64, 64, 3))
    lm = jnp.asarray([[[-0.3, -0.2], [0.3, -0.2], [0.0, 0.0], [0.0, 0.4]]])
    mouth_err = target.at[0, 42:48, 29:35].set(1.0)  # around (0, 0.4)
    terms = L.facial_region_losses(mouth_err, target, lm, 0.3)
    assert float(terms["mouth"]) > 10 * float(terms["eyes"])
    eye_err = target.at[0, 23:29, 20:26].set(1.0)  # around (-0.3, -0.2)
    terms = L.facial_region_losses(eye_err, target, lm, 0.3)
    assert float(terms["eyes"]) > 10 * float(terms["mouth"])


def test_keypoint_loss_known_value():
    """loss.keypoints: mean |first L keypoints − the L landmarks| / 0.02; the keypoints past L
    are free; zero at the truth; too few keypoints are refused."""
    from vasa_jax.losses import keypoint_loss

    lm = jnp.asarray(np.random.default_rng(0).uniform(-0.5, 0.5, (2, 4, 2)), jnp.float32)
    free = jnp.full((2, 3, 2), 0.9)
    kp = jnp.concatenate([lm, free], axis=1)
    assert float(keypoint_loss(kp, lm)) == pytest.approx(0.0, abs=1e-6)
    # One coordinate off by 0.04 among 2 × 4 × 2: 0.04 / 16 / 0.02; moving a free one costs 0.
    off = kp.at[1, 2, 0].add(0.04).at[0, 5, 1].add(0.3)
    assert float(keypoint_loss(off, lm)) == pytest.approx(0.125, rel=1e-4)
    with pytest.raises(ValueError, match="keypoint_loss"):
        keypoint_loss(kp[:, :3], lm)


def test_head_position_loss_known_value():
    """loss.head_position: mean |(t_x, t_y, log s) of z_pose − (head centre, log(scale /
    HEAD_SCALE_REF))| / 0.1; zero at the truth; mismatched shapes are refused."""
    from vasa_jax.losses import HEAD_SCALE_REF, head_position_loss

    trans = jnp.array([[0.1, -0.2], [0.0, 0.3]])
    scale = jnp.array([HEAD_SCALE_REF, HEAD_SCALE_REF * np.e ** 0.3])
    z = jnp.zeros((2, 7)).at[:, 3:5].set(trans).at[:, 6].set(jnp.log(scale / HEAD_SCALE_REF))
    assert float(head_position_loss(z, trans, scale)) == pytest.approx(0.0, abs=1e-6)
    # Off by 0.06 in t_x on one row and 0.3 in log-scale on the other: (0.06 + 0.3) / 6 / 0.1.
    off = z.at[0, 3].add(0.06).at[1, 6].add(-0.3)
    assert float(head_position_loss(off, trans, scale)) == pytest.approx(0.6, rel=1e-5)
    with pytest.raises(ValueError, match="head_position_loss"):
        head_position_loss(z, trans, scale[:1])


def test_expression_loss_known_value():
    """loss.expression anchors z_dyn[:, :2] to (mouth opening, eye closure): mean |difference|
    over those components only; the rest of z_dyn is free."""
    from vasa_jax.losses import expression_loss

    z = jnp.array([[0.5, 0.0, 9.0], [0.25, 1.0, -9.0]])
    target = jnp.array([[0.5, 0.5], [0.75, 1.0]])
    assert float(expression_loss(z, target)) == pytest.approx((0.5 + 0.5) / 4)
    assert float(expression_loss(z, z[:, :2])) == 0.0
    # Squared (config.expression_squared): mean of squares / 0.1.
    assert float(expression_loss(z, target, squared=True)) == pytest.approx(
        (0.25 + 0.25) / 4 / 0.1, rel=1e-6)
    with pytest.raises(ValueError, match="expression_loss"):
        expression_loss(z, target[:1])
