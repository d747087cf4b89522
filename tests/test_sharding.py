"""Mesh construction, batch → global array, and parameter partition rules on 8 fake CPU devices."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vasa_jax import sharding
from vasa_jax.data import pipelines
from vasa_jax.errors import ConfigError


def _batch(b=16):
    rng = np.random.default_rng(0)
    return {
        "source": rng.integers(0, 256, size=(b, 8, 8, 3), dtype=np.uint8),
        "rotation": rng.normal(size=(b, 5, 3)).astype(np.float32),
        "identity": np.arange(b, dtype=np.int64) * 7,
    }


def test_make_mesh_shapes(devices):
    m = sharding.make_mesh(data=4, fsdp=2)
    assert m.axis_names == ("data", "fsdp")
    assert dict(m.shape) == {"data": 4, "fsdp": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
    assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1}
    assert dict(sharding.make_mesh(fsdp=4).shape) == {"data": 2, "fsdp": 4}
    m3 = sharding.make_mesh(data=2, fsdp=2, model=2)
    assert m3.axis_names == ("data", "fsdp", "model")
    assert sharding.batch_axes(m3) == ("data", "fsdp")
    cfg = {"mesh": {"data": -1, "fsdp": 2}}
    assert dict(sharding.mesh_from_config(cfg).shape) == {"data": 4, "fsdp": 2}


@pytest.mark.parametrize("kw, field", [
    (dict(data=3, fsdp=2), "data×fsdp×model"),
    (dict(data=-1, fsdp=3), "fsdp"),
    (dict(data=8, fsdp=0), "fsdp"),
    (dict(data=4, model=-1), "model"),
])
def test_make_mesh_bad_sizes(devices, kw, field):
    with pytest.raises(ConfigError, match=field) as info:
        sharding.make_mesh(**kw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [dict(data=4, fsdp=2), dict(data=8)])
def test_global_batch_equals_local_batch(devices, shape):
    mesh = sharding.make_mesh(**shape)
    local = _batch(16)
    glob = pipelines.global_batch(local, mesh)
    per_device = 16 // 8
    flat_devices = list(mesh.devices.reshape(-1))  # row-major: data major, fsdp minor
    for key, arr in glob.items():
        assert isinstance(arr, jax.Array)
        assert arr.shape == local[key].shape
        assert arr.dtype == jax.dtypes.canonicalize_dtype(local[key].dtype)
        np.testing.assert_array_equal(np.asarray(arr), local[key])
        assert arr.sharding.is_equivalent_to(sharding.batch_sharding(mesh), arr.ndim)
        assert len(arr.addressable_shards) == 8
        for shard in arr.addressable_shards:
            pos = flat_devices.index(shard.device)
            rows = slice(pos * per_device, (pos + 1) * per_device)
            assert shard.index[0] == rows
            np.testing.assert_array_equal(np.asarray(shard.data), local[key][rows])


def test_global_batch_rejects_indivisible_batch(devices):
    mesh = sharding.make_mesh(data=8)
    with pytest.raises(ConfigError, match="batch_size"):
        pipelines.global_batch(_batch(12), mesh)


def test_global_batch_refuses_int64_overflow(devices):
    mesh = sharding.make_mesh(data=8)
    batch = {"clip_seed": np.full(8, 2**40, np.int64)}
    with pytest.raises(ValueError, match="clip_seed"):
        pipelines.global_batch(batch, mesh)


def test_global_batch_feeds_a_jitted_step(devices):
    mesh = sharding.make_mesh(data=4, fsdp=2)
    local = _batch(8)
    glob = pipelines.global_batch(local, mesh)
    total = jax.jit(lambda b: (b["rotation"].sum(), b["identity"].sum()))(glob)
    np.testing.assert_allclose(total[0], local["rotation"].sum(), rtol=1e-5)
    assert int(total[1]) == int(local["identity"].sum())


def test_partition_rules(devices):
    mesh = sharding.make_mesh(data=4, fsdp=2)
    rules = [
        (r"embed/table", P(None, "fsdp")),
        (r"norm/scale$", P()),
        (r".*", sharding.FSDP),
    ]
    spec = sharding.partition_spec_for
    assert spec("encoder/conv/kernel", (3, 3, 64, 128), rules, mesh) == P(None, None, None, "fsdp")
    assert spec("dit/mlp/kernel", (1024, 512), rules, mesh) == P("fsdp", None)
    assert spec("embed/table", (10, 64), rules, mesh) == P(None, "fsdp")
    assert spec("block/norm/scale", (4096,), rules, mesh) == P()
    assert spec("dit/bias", (512,), rules, mesh) == P()  # below FSDP_MIN_SIZE
    assert spec("odd/kernel", (4095, 3), rules, mesh) == P()  # nothing divisible by 2
    assert spec("anything", (1024, 512), [], mesh) == P()  # no rule: replicated
    assert sharding.fsdp_spec((8192,), 1) == P()  # fsdp=1: replicated
    with pytest.raises(ConfigError, match="embed/table"):
        spec("embed/table", (10, 63), rules, mesh)
    with pytest.raises(ConfigError, match="rank"):
        spec("embed/table", (10,), rules, mesh)


def test_tree_shardings_place_params(devices):
    mesh = sharding.make_mesh(data=4, fsdp=2)
    params = {"dense": {"kernel": np.arange(64 * 128, dtype=np.float32).reshape(64, 128),
                        "bias": np.ones(128, np.float32)}}
    shardings = sharding.tree_shardings(params, mesh)
    assert shardings["dense"]["kernel"].spec == P(None, "fsdp")
    assert shardings["dense"]["bias"].spec == P()
    placed = jax.device_put(params, shardings)
    np.testing.assert_array_equal(np.asarray(placed["dense"]["kernel"]), params["dense"]["kernel"])
    shard_shapes = {s.data.shape for s in placed["dense"]["kernel"].addressable_shards}
    assert shard_shapes == {(64, 64)}
    assert isinstance(shardings["dense"]["bias"], NamedSharding)
