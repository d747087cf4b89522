"""Real orbax checkpoints: state + grain iterator in one step, restored onto another mesh;
metrics logging and the non-finite guard."""

import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vasa_jax import sharding
from vasa_jax.checkpoint import Checkpointer
from vasa_jax.train.common import MetricsWriter, NonFiniteLossError, check_finite, read_metrics


def _dataset(seed=0):
    ds = grain.MapDataset.range(40).seed(seed).shuffle().map(lambda i: {"x": np.int64(i)})
    return ds.batch(4).to_iter_dataset()


def _state(mesh, rng):
    w = rng.normal(size=(16, 8)).astype(np.float32)
    b = rng.normal(size=(8,)).astype(np.float32)
    return {
        "params": {
            "w": jax.device_put(w, NamedSharding(mesh, P("fsdp", None))),
            "b": jax.device_put(b, NamedSharding(mesh, P())),
        },
        "step": jax.device_put(jnp.int32(7), NamedSharding(mesh, P())),
    }


def test_save_restore_state_and_iterator_onto_another_mesh(tmp_path, devices):
    rng = np.random.default_rng(0)
    mesh_a = sharding.make_mesh(data=4, fsdp=2)
    state = _state(mesh_a, rng)
    it = iter(_dataset())
    for _ in range(3):
        next(it)
    with Checkpointer(tmp_path / "ckpt", async_save=True) as ckpt:
        ckpt.save(3, state, data_iter=it)
    expected_next = [next(it)["x"].tolist() for _ in range(2)]

    # A different mesh: fsdp over all 8 devices.
    mesh_b = sharding.make_mesh(data=1, fsdp=8)
    abstract = {
        "params": {
            "w": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(mesh_b, P("fsdp", None))),
            "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh_b, P())),
        },
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh_b, P())),
    }
    fresh = iter(_dataset())
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() == 3
        restored = ckpt.restore(abstract, data_iter=fresh)
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]),
                                  np.asarray(state["params"]["w"]))
    assert restored["params"]["w"].sharding.mesh.shape["fsdp"] == 8
    assert restored["params"]["w"].addressable_shards[0].data.shape == (2, 8)
    assert int(restored["step"]) == 7
    assert [next(fresh)["x"].tolist() for _ in range(2)] == expected_next


def test_restore_without_checkpoint_raises(tmp_path):
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore({"a": jax.ShapeDtypeStruct((2,), jnp.float32)})


def test_keeps_only_the_newest(tmp_path):
    x = {"a": jnp.arange(4.0)}
    with Checkpointer(tmp_path / "c", max_to_keep=2, async_save=False) as ckpt:
        for s in (1, 2, 3):
            ckpt.save(s, jax.tree.map(lambda v: v * s, x))
        assert ckpt.all_steps() == [2, 3]
        out = ckpt.restore(x)
    np.testing.assert_array_equal(np.asarray(out["a"]), np.arange(4.0) * 3)


def test_metrics_jsonl_and_tensorboard(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write(1, {"loss": np.float32(0.5), "lr": 1e-3})
    w.write(2, {"loss": jnp.float32(0.25), "lr": 1e-3})
    w.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] == 0.25
    json.dumps(rows)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_non_finite_guard_names_step_and_checkpoint():
    check_finite(5, {"loss": 1.0}, last_good_step=4)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 12.*step 10"):
        check_finite(12, {"loss": float("nan"), "l1": 0.1}, last_good_step=10)
    with pytest.raises(NonFiniteLossError, match="no checkpoint"):
        check_finite(1, {"gan": float("inf")}, last_good_step=None)
