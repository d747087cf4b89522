"""Trilinear warping of feature volumes (channels-last), matching `torch.nn.functional.grid_sample`.

Layouts:
  volume: [B, D, H, W, C]
  grid:   [B, Do, Ho, Wo, 3], normalised coordinates (x, y, z) in [-1, 1];
          x indexes W, y indexes H, z indexes D (torch's 5-D grid_sample convention).

`trilinear_sample(volume, grid)` equals
`grid_sample(volume.permute(0, 4, 1, 2, 3), grid, mode="bilinear").permute(0, 2, 3, 4, 1)`
for the same `padding_mode` ("zeros" or "border") and `align_corners`, values and gradients;
`bilinear_sample(image, grid)` is the same for [B, H, W, C] images and 4-D grids [B, Ho, Wo, 2].
"""
from __future__ import annotations

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np

_PADDING_MODES = ("zeros", "border")


def _unnormalise(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
    """Maps [-1, 1] to pixel coordinates along an axis of `size` samples (torch's formula)."""
    if align_corners:
        # -1 and 1 are the centres of the first and last samples.
        return (coord + 1.0) * 0.5 * (size - 1)
    # -1 and 1 are the outer edges of the first and last samples.
    return ((coord + 1.0) * size - 1.0) * 0.5


def _normalise(pixel: jax.Array, size: int, align_corners: bool) -> jax.Array:
    """Inverse of `_unnormalise`."""
    if align_corners:
        return pixel * 2.0 / (size - 1) - 1.0
    return (pixel * 2.0 + 1.0) / size - 1.0


def trilinear_sample(
    volume: jax.Array,
    grid: jax.Array,
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> jax.Array:
    """Samples `volume` at `grid` with trilinear interpolation.

    Args:
      volume: [B, D, H, W, C].
      grid: [B, Do, Ho, Wo, 3], normalised (x, y, z); x indexes W, y H, z D.
      padding_mode: "zeros" (samples outside the volume read 0) or "border"
        (coordinates are clamped to the volume first, as torch does).
      align_corners: torch's meaning; see `_unnormalise`.

    Returns:
      [B, Do, Ho, Wo, C], dtype of `volume`. Differentiable w.r.t. volume and grid.
    """
    return _sample(volume, grid, padding_mode, align_corners, ndim=3)


def bilinear_sample(
    image: jax.Array,
    grid: jax.Array,
    padding_mode: str = "zeros",
    align_corners: bool = False,
) -> jax.Array:
    """`trilinear_sample`'s 2D counterpart: image [B, H, W, C] at grid [B, Ho, Wo, 2]
    (normalised (x, y)) → [B, Ho, Wo, C]; equal to torch's 4-D `grid_sample` (bilinear)."""
    return _sample(image, grid, padding_mode, align_corners, ndim=2)


def _sample(volume: jax.Array, grid: jax.Array, padding_mode: str, align_corners: bool,
            ndim: int) -> jax.Array:
    """Checks and flattens for `_interpolate`: volume [B, *spatial, C] and grid
    [B, *out_spatial, ndim] with `ndim` spatial axes each → [B, *out_spatial, C]."""
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
    chex.assert_rank(volume, ndim + 2)
    chex.assert_rank(grid, ndim + 2)
    chex.assert_axis_dimension(grid, -1, ndim)
    chex.assert_equal_shape_prefix((volume, grid), 1)
    b, c = volume.shape[0], volume.shape[-1]
    out = _interpolate(volume, grid.reshape(b, -1, ndim), padding_mode, align_corners)
    return out.reshape(*grid.shape[:-1], c)


def _interpolate(volume: jax.Array, pts: jax.Array, padding_mode: str,
                 align_corners: bool) -> jax.Array:
    """volume [B, *spatial, C] (spatial (H, W) or (D, H, W)) read at pts [B, N, ndim] (x first)
    by multilinear interpolation over the 2^ndim corners of each cell → [B, N, C]."""
    b, *spatial, c = volume.shape
    dtype = jnp.result_type(volume.dtype, pts.dtype)
    pts = pts.astype(dtype)
    sizes = tuple(reversed(spatial))  # the grid's order: x indexes W, y H, z D
    corners = []  # per axis: (lower index, its weight), (upper index, its weight)
    for axis, size in enumerate(sizes):
        p = _unnormalise(pts[..., axis], size, align_corners)
        if padding_mode == "border":
            # torch clamps before taking corners, so the clamped side gets zero gradient.
            p = jnp.clip(p, 0.0, size - 1)
        lo = jnp.floor(p)
        frac = p - lo  # floor has zero gradient, so d(frac)/dp = 1 as in torch
        lo = lo.astype(jnp.int32)
        corners.append(((lo, 1.0 - frac), (lo + 1, frac)))

    flat = volume.reshape(b, -1, c)
    gather = jax.vmap(lambda v, i: v[i])  # [cells, C], [N] -> [N, C]
    out = jnp.zeros((b, pts.shape[1], c), dtype)
    # Static unrolled loop over the corners of each cell.
    for corner in itertools.product(*corners):
        inside, flat_idx, weight = True, 0, 1.0
        # Row-major flat index over (D,) H, W: the last grid axis is the slowest.
        for (idx, _), size in reversed(list(zip(corner, sizes))):
            inside = inside & (idx >= 0) & (idx < size)
            # Clipped indices keep the gather in bounds; `inside` zeroes corners that lie
            # outside (zeros padding), however far out the point is.
            flat_idx = flat_idx * size + jnp.clip(idx, 0, size - 1)
        for _, wgt in corner:
            weight = weight * wgt
        weight = jnp.where(inside, weight, 0.0)
        out = out + weight[..., None] * gather(flat, flat_idx).astype(dtype)
    return out.astype(volume.dtype)


def identity_grid(d: int, h: int, w: int, align_corners: bool = False) -> jax.Array:
    """Grid of sample centres that reproduces a [.., d, h, w, ..] volume.

    Returns:
      [d, h, w, 3] normalised (x, y, z) coordinates (float32).
    """
    # Built in float64 on the host (sizes are static) so the float32 result is the
    # correctly rounded coordinate; sampling it reproduces the volume up to float32 rounding.
    zs, ys, xs = (_normalise(np.arange(n, dtype=np.float64), n, align_corners) for n in (d, h, w))
    z, y, x = np.meshgrid(zs, ys, xs, indexing="ij")
    return jnp.asarray(np.stack([x, y, z], axis=-1), dtype=jnp.float32)


def rigid_grid(
    rotation: jax.Array,
    translation: jax.Array,
    scale: jax.Array,
    d: int,
    h: int,
    w: int,
    align_corners: bool = False,
) -> jax.Array:
    """Identity grid transformed by a similarity: p' = scale * (R @ p) + t.

    `p` are the (x, y, z) normalised coordinates of `identity_grid(d, h, w)`, so the
    rotation acts about the volume centre and the translation is in normalised units.
    Sampling a volume at the result gives, at output location p, the input at p' (a
    backward warp: the content moves by the inverse transform).

    Args:
      rotation: [B, 3, 3], acting on (x, y, z) column vectors.
      translation: [B, 3], (x, y, z).
      scale: [B].

    Returns:
      [B, d, h, w, 3] sampling grid for `trilinear_sample`.
    """
    chex.assert_shape(rotation, (None, 3, 3))
    b = rotation.shape[0]
    chex.assert_shape(translation, (b, 3))
    chex.assert_shape(scale, (b,))
    p = identity_grid(d, h, w, align_corners)
    rotated = jnp.einsum("bij,dhwj->bdhwi", rotation, p)
    return scale[:, None, None, None, None] * rotated + translation[:, None, None, None, :]
