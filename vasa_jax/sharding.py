"""Device mesh, batch sharding and parameter partition rules — kept in one place.

Mesh axes: always ("data", "fsdp"), plus "model" only when model > 1 (so specs that never
mention "model" work on every mesh, and a 1-wide model axis does not clutter shardings).
All axes are `AxisType.Auto` (explicit axes, `jax.make_mesh`'s default, make tensor-parallel
matmuls raise ShardingTypeError).

The batch is split over ("data", "fsdp") together: FSDP devices see different examples and
gather parameters. Parameters follow `rules`, a sequence of (regex, spec): the first regex that
`re.search`es the parameter path ("encoder/conv1/kernel") wins; spec is a PartitionSpec or
`FSDP`, which shards the largest dimension divisible by the fsdp size (replicated when none
divides or the array is smaller than `min_fsdp_size` elements).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vasa_jax.errors import ConfigError, check

DATA, FSDP_AXIS, MODEL = "data", "fsdp", "model"
BATCH_AXES = (DATA, FSDP_AXIS)


class _FsdpRule:
    """Sentinel spec: shard the largest divisible dimension over 'fsdp'."""

    def __repr__(self):
        return "FSDP"


FSDP = _FsdpRule()
# Parameters below this many elements stay replicated under the FSDP rule (biases, norms).
FSDP_MIN_SIZE = 2**12
DEFAULT_RULES: tuple[tuple[str, Any], ...] = ((r".*", FSDP),)


def _size(value: Any, field: str, allow_fill: bool) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    check(ok, f"mesh {field} must be an integer, got {value!r}")
    value = int(value)
    if allow_fill:
        check(value == -1 or value >= 1, f"mesh {field}={value} is invalid: use -1 (fill) or >= 1")
    else:
        check(value >= 1, f"mesh {field}={value} is invalid: use an integer >= 1")
    return value


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `devices` (default all) with axes data × fsdp (× model when model > 1).

    data=-1 takes whatever the other axes leave; sizes must multiply to the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    data = _size(data, "data", allow_fill=True)
    fsdp = _size(fsdp, "fsdp", allow_fill=False)
    model = _size(model, "model", allow_fill=False)
    if data == -1:
        check(n % (fsdp * model) == 0,
              f"mesh fsdp×model = {fsdp}×{model} does not divide the {n} devices: choose "
              f"fsdp and model whose product divides {n}")
        data = n // (fsdp * model)
    check(data * fsdp * model == n,
          f"mesh data×fsdp×model = {data}×{fsdp}×{model} = {data * fsdp * model} does not match "
          f"the {n} devices: choose sizes whose product is {n} (data=-1 fills in)")
    shape, names = [data, fsdp], [DATA, FSDP_AXIS]
    if model > 1:
        shape.append(model)
        names.append(MODEL)
    return jax.make_mesh(tuple(shape), tuple(names),
                         axis_types=(jax.sharding.AxisType.Auto,) * len(names), devices=devices)


def mesh_from_config(config: Any, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh from a config (mapping or ConfigDict) with fields data / fsdp / model, or a `mesh`
    sub-config holding them; missing fields take make_mesh's defaults."""
    if isinstance(config, Mapping) or hasattr(config, "get"):
        sub = config.get("mesh", None)
        if sub is not None:
            config = sub
        get = config.get
    else:
        get = lambda k, d: getattr(config, k, d)  # noqa: E731
    return make_mesh(get("data", -1), get("fsdp", 1), get("model", 1), devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch is split over: ("data", "fsdp") present in the mesh."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: axis 0 over ("data", "fsdp"), the rest replicated."""
    axes = batch_axes(mesh)
    return NamedSharding(mesh, P(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _axis_size(mesh: Mesh | Mapping[str, int], axis: str) -> int:
    shape = mesh.shape if isinstance(mesh, Mesh) else mesh
    return int(shape.get(axis, 1))


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """Shards the largest dimension divisible by fsdp_size over 'fsdp' (ties: the last one)."""
    if fsdp_size <= 1 or math.prod(shape) < min_size:
        return P()
    best = None
    for i, dim in enumerate(shape):
        if dim % fsdp_size == 0 and (best is None or dim >= shape[best]):
            best = i
    if best is None:
        return P()
    spec = [None] * len(shape)
    spec[best] = FSDP_AXIS
    return P(*spec)


def partition_spec_for(path: str, shape: Sequence[int], rules: Sequence[tuple[str, Any]],
                       mesh: Mesh | Mapping[str, int], min_fsdp_size: int = FSDP_MIN_SIZE) -> P:
    """PartitionSpec of the parameter at `path` with `shape` under the first matching rule.

    No match → replicated. A rule's PartitionSpec is checked against the shape and the mesh
    (ConfigError naming the parameter when an axis does not divide its dimension).
    """
    shape = tuple(int(d) for d in shape)
    for pattern, spec in rules:
        if re.search(pattern, path):
            break
    else:
        return P()
    if spec is FSDP:
        return fsdp_spec(shape, _axis_size(mesh, FSDP_AXIS), min_fsdp_size)
    spec = spec if isinstance(spec, P) else P(*spec)
    check(len(spec) <= len(shape),
          f"partition rule {pattern!r} gives {spec} for {path} of rank {len(shape)}: "
          "use a spec with at most one entry per dimension")
    for dim, axes in zip(shape, spec):
        if axes is None:
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        ways = math.prod(_axis_size(mesh, a) for a in names)
        check(dim % ways == 0,
              f"partition rule {pattern!r} splits a dimension of {dim} of {path} {shape} "
              f"{ways} ways over {names}: change the rule or the mesh")
    return spec


def path_str(path: Sequence[Any]) -> str:
    """jax tree path → 'a/b/0/c'."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def tree_partition_specs(tree: Any, mesh: Mesh | Mapping[str, int],
                         rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
                         min_fsdp_size: int = FSDP_MIN_SIZE) -> Any:
    """PartitionSpecs for every array leaf (anything with .shape) of `tree`."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: partition_spec_for(path_str(p), np.shape(x), rules, mesh, min_fsdp_size),
        tree)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
                   min_fsdp_size: int = FSDP_MIN_SIZE) -> Any:
    """NamedShardings for every leaf of `tree` (e.g. for jit in/out_shardings or orbax)."""
    specs = tree_partition_specs(tree, mesh, rules, min_fsdp_size)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


__all__ = [
    "BATCH_AXES", "DATA", "DEFAULT_RULES", "FSDP", "FSDP_AXIS", "FSDP_MIN_SIZE", "MODEL",
    "ConfigError", "batch_axes", "batch_sharding", "fsdp_spec", "make_mesh", "mesh_from_config",
    "partition_spec_for", "path_str", "replicated", "tree_partition_specs", "tree_shardings",
]
