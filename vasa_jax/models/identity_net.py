"""A small identity-embedding CNN for SynthTalk, and the interface a real face-ID network plugs into.

`IdentityFeatureFn` is any callable `images [B, H, W, 3] in [-1, 1] -> [B, dim]` unit-norm
embeddings; `losses.cross_identity_loss` takes one. On SynthTalk, `IdentityNet` trained with
the ArcFace head (`ArcFaceHead`, additive angular margin) on identity labels is that callable;
for real data wrap an ArcFace network loaded from the user's own weights the same way.
Freezing the identity network is the caller's job: `make_identity_fn` closes over
`stop_gradient`-ed parameters.
"""
from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx


class IdentityFeatureFn(Protocol):
    def __call__(self, images: jax.Array) -> jax.Array:
        """images: [B, H, W, 3] in [-1, 1] -> L2-normalised embeddings [B, dim]."""
        ...


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), eps * eps))


class IdentityNet(nnx.Module):
    """Strided 3x3 convs (GroupNorm, SiLU) -> global average pool -> linear -> L2 normalise.

    `__call__(images: [B, H, W, 3]) -> [B, dim]`, unit norm.
    """

    def __init__(self, dim: int = 128, channels: tuple[int, ...] = (32, 64, 128, 256),
                 *, rngs: nnx.Rngs):
        cins = (3, *channels[:-1])
        self.convs = nnx.List([
            nnx.Conv(ci, co, (3, 3), strides=2, padding=((1, 1), (1, 1)), rngs=rngs)
            for ci, co in zip(cins, channels)
        ])
        self.norms = nnx.List([
            nnx.GroupNorm(co, num_groups=min(8, co), rngs=rngs) for co in channels
        ])
        self.proj = nnx.Linear(channels[-1], dim, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"IdentityNet expects images [B, H, W, 3], got {images.shape}")
        h = images
        for conv, norm in zip(self.convs, self.norms):
            h = jax.nn.silu(norm(conv(h)))
        return l2_normalize(self.proj(jnp.mean(h, axis=(1, 2))))


class ArcFaceHead(nnx.Module):
    """Cosine-softmax classifier over `num_classes` identities with unit-norm class centres."""

    def __init__(self, dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.centres = nnx.Param(jax.random.normal(rngs.params(), (num_classes, dim)))

    def cosines(self, embeddings: jax.Array) -> jax.Array:
        """embeddings: [B, dim] (unit norm) -> cosines [B, num_classes]."""
        return l2_normalize(embeddings) @ l2_normalize(self.centres[...]).T


def identity_logits(cosines: jax.Array, labels: jax.Array, margin: float = 0.5,
                    scale: float = 32.0) -> jax.Array:
    """ArcFace logits: s * cos(theta + m) for the true class, s * cos(theta) otherwise.

    cosines: [B, K]; labels: [B] int -> logits [B, K].
    """
    cos = jnp.clip(cosines, -1.0 + 1e-6, 1.0 - 1e-6)
    target = jnp.cos(jnp.arccos(cos) + margin)
    onehot = jax.nn.one_hot(labels, cos.shape[-1], dtype=bool)
    return scale * jnp.where(onehot, target, cos)


def arcface_loss(net: IdentityNet, head: ArcFaceHead, images: jax.Array, labels: jax.Array,
                 margin: float = 0.5, scale: float = 32.0) -> jax.Array:
    """Mean softmax cross-entropy of the ArcFace logits. images: [B, H, W, 3]; labels: [B]."""
    logits = identity_logits(head.cosines(net(images)), labels, margin, scale)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def make_identity_fn(graphdef: nnx.GraphDef, state: nnx.State) -> IdentityFeatureFn:
    """A frozen `IdentityFeatureFn` from a split `IdentityNet` (no gradient reaches its params)."""
    def id_fn(images: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, jax.lax.stop_gradient(state))(images)

    return id_fn
