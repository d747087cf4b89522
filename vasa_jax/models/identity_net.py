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


# ----------------------------------------------------------------------------------------------
# Saved networks: `WORKDIR/identity_net/` = net.json (architecture) + an orbax params checkpoint.

NET_JSON = "net.json"


def save_identity_net(directory: str, net: IdentityNet, arch: dict, metrics: dict | None = None
                      ) -> None:
    """Writes `directory/net.json` (arch + metrics) and `directory/params` (orbax, no pickle)."""
    import json
    import os

    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    params = nnx.state(net, nnx.Param).to_pure_dict()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "params"), params, force=True)
    with open(os.path.join(directory, NET_JSON), "w", encoding="utf-8") as f:
        json.dump({"kind": "synthtalk_identity_net", "arch": arch, "metrics": metrics or {}}, f,
                  indent=1)


def load_identity_net(directory: str) -> tuple[IdentityNet, dict]:
    """Loads a network written by `save_identity_net` → (IdentityNet, net.json contents)."""
    import json
    import os

    import orbax.checkpoint as ocp

    from vasa_jax.errors import ConfigError

    directory = os.path.abspath(os.fspath(directory))
    meta_path = os.path.join(directory, NET_JSON)
    if not os.path.isfile(meta_path):
        raise ConfigError(f"identity network {directory!r} has no {NET_JSON}: train one with "
                          "`python -m vasa_jax.train.identity --workdir W` and pass "
                          "W/identity_net")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    arch = meta["arch"]
    abstract = nnx.eval_shape(lambda: IdentityNet(arch["dim"], tuple(arch["channels"]),
                                                  rngs=nnx.Rngs(0)))
    graphdef, abs_params = nnx.split(abstract, nnx.Param)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          abs_params.to_pure_dict())
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(os.path.join(directory, "params"), target)
    return nnx.merge(graphdef, params), meta


def load_identity_fn(directory: str) -> IdentityFeatureFn:
    """A frozen `IdentityFeatureFn` from a saved SynthTalk identity network."""
    net, _ = load_identity_net(directory)
    graphdef, state = nnx.split(net)
    return make_identity_fn(graphdef, state)
