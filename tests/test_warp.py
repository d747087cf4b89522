"""Trilinear warp: parity with torch grid_sample (values and gradients), identity/rigid grids, jit."""
import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

from vasa_jax.models.warp import bilinear_sample, identity_grid, rigid_grid, trilinear_sample

MODES = [(p, a) for p in ("zeros", "border") for a in (False, True)]
VOL_SHAPE = (2, 5, 6, 7, 3)  # [B, D, H, W, C]
OUT_SPATIAL = (4, 5, 6)


@contextlib.contextmanager
def _x64():
    """float64 for finite differences (jax.experimental.enable_x64 is gone in jax 0.10)."""
    if hasattr(jax, "enable_x64"):  # config context manager on jax 0.10/0.11
        with jax.enable_x64(True):
            yield
        return
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def _torch_sample(volume, grid, padding_mode, align_corners):
    """volume [B, D, H, W, C], grid [B, Do, Ho, Wo, 3] torch tensors -> [B, Do, Ho, Wo, C]."""
    out = F.grid_sample(
        volume.permute(0, 4, 1, 2, 3), grid, mode="bilinear",
        padding_mode=padding_mode, align_corners=align_corners,
    )
    return out.permute(0, 2, 3, 4, 1)


def _normalise(pixel, size, align_corners):
    if align_corners:
        return pixel * 2.0 / (size - 1) - 1.0
    return (pixel * 2.0 + 1.0) / size - 1.0


def _off_lattice_grid(rng, b, out_spatial, vol_spatial, align_corners, lo=-2, frac=(0.2, 0.8)):
    """Grid whose pixel coordinates are k + f, f in `frac`: away from every cell boundary
    (gradient kinks), k in [lo, size] so some points lie outside the volume."""
    d, h, w = vol_spatial
    coords = []
    for size in (w, h, d):  # (x, y, z)
        k = rng.integers(lo, size + 1, size=(b, *out_spatial))
        f = rng.uniform(*frac, size=(b, *out_spatial))
        coords.append(_normalise(k + f, size, align_corners))
    return np.stack(coords, axis=-1)


@pytest.mark.parametrize("padding_mode,align_corners", MODES)
def test_value_parity_with_torch(padding_mode, align_corners):
    rng = np.random.default_rng(0)
    volume = rng.standard_normal(VOL_SHAPE).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, size=(2, *OUT_SPATIAL, 3)).astype(np.float32)
    grid[0, 0, 0, :3] = [[3.0, 0.1, 0.2], [-3.0, -3.0, 3.0], [0.5, 3.0, -3.0]]  # far outside
    grid[1, 1, 1, 1] = [-1.0, 1.0, -1.0]  # a corner of the [-1, 1] cube

    out = np.asarray(trilinear_sample(jnp.asarray(volume), jnp.asarray(grid), padding_mode, align_corners))
    ref = _torch_sample(torch.from_numpy(volume), torch.from_numpy(grid), padding_mode, align_corners).numpy()

    assert out.shape == (2, *OUT_SPATIAL, 3)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("padding_mode,align_corners", MODES)
def test_gradient_parity_with_torch(padding_mode, align_corners):
    rng = np.random.default_rng(1)
    volume = rng.standard_normal(VOL_SHAPE).astype(np.float32)
    grid = _off_lattice_grid(rng, 2, OUT_SPATIAL, VOL_SHAPE[1:4], align_corners).astype(np.float32)
    weights = rng.standard_normal((2, *OUT_SPATIAL, 3)).astype(np.float32)

    def loss(v, g):
        return jnp.sum(trilinear_sample(v, g, padding_mode, align_corners) * weights)

    dv, dg = jax.grad(loss, argnums=(0, 1))(jnp.asarray(volume), jnp.asarray(grid))

    tv = torch.from_numpy(volume).requires_grad_(True)
    tg = torch.from_numpy(grid).requires_grad_(True)
    (_torch_sample(tv, tg, padding_mode, align_corners) * torch.from_numpy(weights)).sum().backward()

    np.testing.assert_allclose(np.asarray(dv), tv.grad.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(dg), tg.grad.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("padding_mode,align_corners", MODES)
def test_bilinear_parity_with_torch_4d(padding_mode, align_corners):
    """bilinear_sample (4 corners; the decoder's source skip reads f_src with it) against
    torch's 4-D grid_sample: values on points inside, outside and far outside the image, and
    gradients w.r.t. image and grid on off-lattice points."""
    rng = np.random.default_rng(11)
    image = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)  # [B, H, W, C]
    grid = rng.uniform(-1.3, 1.3, size=(2, 5, 4, 2)).astype(np.float32)
    grid[0, 0, :3] = [[3.0, 0.1], [-3.0, -3.0], [0.5, 3.0]]  # far outside
    ref_fn = lambda v, g: F.grid_sample(  # noqa: E731
        v.permute(0, 3, 1, 2), g, mode="bilinear", padding_mode=padding_mode,
        align_corners=align_corners).permute(0, 2, 3, 1)
    out = bilinear_sample(jnp.asarray(image), jnp.asarray(grid), padding_mode, align_corners)
    ref = ref_fn(torch.from_numpy(image), torch.from_numpy(grid)).numpy()
    assert out.shape == (2, 5, 4, 3)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)

    grid = _off_lattice_grid(rng, 2, (5, 4, 1), (1, 6, 7), align_corners)[..., 0, :2]
    grid = grid.astype(np.float32)
    weights = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    dv, dg = jax.grad(lambda v, g: jnp.sum(bilinear_sample(v, g, padding_mode, align_corners)
                                           * weights), argnums=(0, 1))(jnp.asarray(image),
                                                                       jnp.asarray(grid))
    tv = torch.from_numpy(image).requires_grad_(True)
    tg = torch.from_numpy(grid).requires_grad_(True)
    (ref_fn(tv, tg) * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(np.asarray(dv), tv.grad.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(dg), tg.grad.numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("padding_mode,align_corners", MODES)
def test_check_grads_float64(padding_mode, align_corners):
    rng = np.random.default_rng(2)
    vol_shape = (1, 3, 4, 5, 2)
    with _x64():
        volume = jnp.asarray(rng.standard_normal(vol_shape))
        grid = jnp.asarray(_off_lattice_grid(rng, 1, (2, 3, 2), vol_shape[1:4], align_corners))
        assert volume.dtype == jnp.float64 and grid.dtype == jnp.float64
        f = lambda v, g: trilinear_sample(v, g, padding_mode, align_corners)  # noqa: E731
        check_grads(f, (volume, grid), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-3)


@pytest.mark.parametrize("align_corners", [False, True])
def test_identity_grid_reproduces_volume(align_corners):
    rng = np.random.default_rng(3)
    volume = jnp.asarray(rng.standard_normal(VOL_SHAPE).astype(np.float32))
    d, h, w = VOL_SHAPE[1:4]
    grid = identity_grid(d, h, w, align_corners)
    assert grid.shape == (d, h, w, 3)
    grid = jnp.broadcast_to(grid, (VOL_SHAPE[0], d, h, w, 3))
    for padding_mode in ("zeros", "border"):
        out = trilinear_sample(volume, grid, padding_mode, align_corners)
        # Not bit-exact: the float32 unnormalise leaves ~1e-7 weights on neighbours (torch too).
        np.testing.assert_allclose(np.asarray(out), np.asarray(volume), atol=1e-6, rtol=0)


@pytest.mark.parametrize("align_corners", [False, True])
def test_rigid_grid_identity_transform(align_corners):
    b, d, h, w = 2, 3, 4, 5
    grid = rigid_grid(jnp.broadcast_to(jnp.eye(3), (b, 3, 3)), jnp.zeros((b, 3)), jnp.ones((b,)), d, h, w, align_corners)
    assert grid.shape == (b, d, h, w, 3)
    np.testing.assert_allclose(np.asarray(grid), np.broadcast_to(identity_grid(d, h, w, align_corners), grid.shape), atol=0)


def test_rigid_grid_rotation_about_depth_axis_is_rot90():
    rng = np.random.default_rng(4)
    n = 5  # odd cube + align_corners=True: the rotated samples land on voxel centres
    volume = rng.standard_normal((1, n, n, n, 2)).astype(np.float32)
    rot_z90 = jnp.asarray([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])  # (x, y) -> (-y, x)
    grid = rigid_grid(rot_z90, jnp.zeros((1, 3)), jnp.ones((1,)), n, n, n, align_corners=True)
    out = trilinear_sample(jnp.asarray(volume), grid, "zeros", align_corners=True)
    expected = np.rot90(volume, k=1, axes=(2, 3))  # out[..., i, j, :] = vol[..., j, n-1-i, :]
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=0)


def test_jit_does_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def warp(volume, grid):
        return trilinear_sample(volume, grid, "border", True)

    rng = np.random.default_rng(5)
    for _ in range(3):
        volume = jnp.asarray(rng.standard_normal(VOL_SHAPE).astype(np.float32))
        grid = jnp.asarray(rng.uniform(-1, 1, size=(2, *OUT_SPATIAL, 3)).astype(np.float32))
        out = warp(volume, grid)
        np.testing.assert_allclose(np.asarray(out), np.asarray(trilinear_sample(volume, grid, "border", True)), atol=1e-6)
