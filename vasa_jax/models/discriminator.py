"""Multi-scale PatchGAN discriminator (pix2pixHD's `NLayerDiscriminator` / `MultiscaleDiscriminator`).

Images are channels-last `[B, H, W, 3]` in [-1, 1]. A `PatchDiscriminator` is a stack of 4x4
convs: `num_layers` stride-2 convs, one stride-1 conv, then a stride-1 conv to one channel of
patch logits. Every conv but the first and the last may be followed by a GroupNorm
(`norm="group"`); each hidden conv is followed by LeakyReLU(0.2). It returns the hidden feature
maps (for feature matching) and the logits.

`MultiScaleDiscriminator` owns `num_scales` independent `PatchDiscriminator`s; scale s sees the
image average-pooled s times (3x3, stride 2, pad 1, padding not counted: torch's
`AvgPool2d(3, 2, 1, count_include_pad=False)`, as in pix2pixHD).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("none", "group")


def downsample_avg(x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]; 3x3 average, stride 2, pad 1, pads not counted."""
    window, strides = (1, 3, 3, 1), (1, 2, 2, 1)
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return total / count


class PatchDiscriminator(nnx.Module):
    """pix2pixHD NLayerDiscriminator. `__call__(x: [B, H, W, C_in]) -> (feats, logits)`.

    feats: `num_layers + 1` maps `[B, h_k, w_k, C_k]` (after each LeakyReLU);
    logits: `[B, h, w, 1]` (no activation; hinge losses use them directly).
    Channels: `base_channels * 2**k`, capped at `max_channels`.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3,
                 max_channels: int = 512, norm: str = "none", num_groups: int = 8,
                 padding: int = 2, *, rngs: nnx.Rngs):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        pad = ((padding, padding), (padding, padding))
        # (cin, cout, stride, normed) for each hidden conv.
        specs, cin = [], in_channels
        for k in range(num_layers + 1):
            cout = min(base_channels * 2 ** k, max_channels)
            stride = 2 if k < num_layers else 1
            specs.append((cin, cout, stride, k > 0 and norm == "group"))
            cin = cout
        self.specs = tuple(specs)
        self.convs = nnx.List([
            nnx.Conv(ci, co, (4, 4), strides=s, padding=pad, rngs=rngs) for ci, co, s, _ in specs
        ])
        self.norms = nnx.List([
            nnx.GroupNorm(co, num_groups=min(num_groups, co), epsilon=1e-5, rngs=rngs)
            if normed else None
            for _, co, _, normed in specs
        ])
        self.final = nnx.Conv(cin, 1, (4, 4), strides=1, padding=pad, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        feats, h = [], x
        for conv, norm in zip(self.convs, self.norms):
            h = conv(h)
            if norm is not None:
                h = norm(h)
            h = jax.nn.leaky_relu(h, 0.2)
            feats.append(h)
        return feats, self.final(h)


class MultiScaleDiscriminator(nnx.Module):
    """`num_scales` PatchDiscriminators on the image at 1, 1/2, 1/4, ... resolution.

    `__call__(x: [B, H, W, C]) -> (feats, logits)` with `feats[s]` the feature list and
    `logits[s]: [B, h_s, w_s, 1]` of scale s (s = 0 is full resolution).
    """

    def __init__(self, num_scales: int = 3, in_channels: int = 3, base_channels: int = 64,
                 num_layers: int = 3, max_channels: int = 512, norm: str = "none",
                 num_groups: int = 8, padding: int = 2, *, rngs: nnx.Rngs):
        self.discriminators = nnx.List([
            PatchDiscriminator(in_channels, base_channels, num_layers, max_channels, norm,
                               num_groups, padding, rngs=rngs)
            for _ in range(num_scales)
        ])

    def __call__(self, x: jax.Array) -> tuple[list[list[jax.Array]], list[jax.Array]]:
        if x.ndim != 4:
            raise ValueError(f"MultiScaleDiscriminator expects [B, H, W, C], got {x.shape}")
        all_feats, all_logits = [], []
        for s, disc in enumerate(self.discriminators):
            if s > 0:
                x = downsample_avg(x)
            feats, logits = disc(x)
            all_feats.append(feats)
            all_logits.append(logits)
        return all_feats, all_logits
