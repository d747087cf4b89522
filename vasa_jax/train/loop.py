"""The training loop both stages share: mesh from the config, restore-or-init, the step loop.

    mesh, batch_sharding, local_batch = loop.setup_mesh(config)
    state = loop.restore_or_init(ckpt, init, abstract, shardings, rng, data_iter)
    metrics = loop.run(config, workdir, state=state, train_step=jitted_step,
                       data_iter=it, to_device=fn, ckpt=ckpt, on_sample=fn)

A trainer supplies its data, its state (a pytree with an int `step` leaf) and a jitted
`train_step(state, batch) -> (state, metrics)`; this module does everything else the same way
for stage 1 and stage 2: `config.json` in the workdir, one JSON line per logged step in
`metrics.jsonl` (+ TensorBoard), the non-finite guard checked before every save, orbax
checkpoints holding the state and the grain iterator together, and the optional wall-clock
budget `config.max_train_minutes`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from vasa_jax import distributed, sharding
from vasa_jax.checkpoint import Checkpointer
from vasa_jax.errors import check
from vasa_jax.train.common import MetricsWriter, StepTimer, check_finite

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"


def save_config(config, workdir: str) -> None:
    """Writes the run's config to `workdir/config.json` (process 0 only; local or bucket)."""
    from etils import epath

    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (epath.Path(workdir) / CONFIG_JSON).write_text(config.to_json_best_effort(indent=1))


def load_config(workdir: str, what: str = "a training"):
    """The config a run was started with (`workdir/config.json`)."""
    import json

    import ml_collections

    from vasa_jax.errors import ConfigError

    from etils import epath

    path = epath.Path(workdir) / CONFIG_JSON
    if not path.is_file():
        raise ConfigError(f"{workdir!r} is not {what} workdir ({CONFIG_JSON} missing): pass the "
                          "--workdir the trainer wrote")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def make_optimizer(config, b1: float = 0.9):
    """AdamW with linear warm-up + cosine decay and global-norm clipping → (tx, schedule).

    Reads config.lr, warmup_steps, steps, grad_clip, weight_decay.
    """
    import optax

    sched = optax.warmup_cosine_decay_schedule(0.0, config.lr, max(1, config.warmup_steps),
                                               max(config.steps, config.warmup_steps + 1))
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.adamw(sched, b1=b1, b2=0.999, weight_decay=config.weight_decay))
    return tx, sched


def ema_update(ema, params, step, max_decay: float):
    """EMA with warm-up: decay = min(max_decay, (1 + t) / (10 + t)), so early averages are not
    dominated by the random initialisation."""
    import jax.numpy as jnp
    import optax

    t = jnp.asarray(step).astype(jnp.float32)
    decay = jnp.minimum(max_decay, (1.0 + t) / (10.0 + t))
    return optax.incremental_update(params, ema, 1.0 - decay)


def setup_mesh(config):
    """(mesh, batch sharding, per-process batch size) from `config.mesh` and `config.batch_size`.

    `config.mesh.num_devices` > 0 uses only the first that many devices (tests, debugging).
    """
    num_devices = config.mesh.get("num_devices", 0)
    mesh = sharding.mesh_from_config(
        config.mesh, devices=jax.devices()[:num_devices] if num_devices else None)
    n_proc = jax.process_count()
    n_batch_shards = int(np.prod([mesh.shape[a] for a in sharding.batch_axes(mesh)]))
    check(config.batch_size % n_batch_shards == 0 and config.batch_size % n_proc == 0,
          f"batch_size={config.batch_size} must be divisible by the data×fsdp mesh size "
          f"({n_batch_shards}) and the process count ({n_proc})")
    return mesh, sharding.batch_sharding(mesh), config.batch_size // n_proc


def sharded_abstract(abstract, shardings):
    """ShapeDtypeStructs carrying the target shardings (orbax restores onto them)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


def restore_or_init(ckpt: Checkpointer, init: Callable, abstract, shardings, rng,
                    data_iter=None):
    """The latest checkpoint (restored onto `shardings`, data iterator included) if there is one,
    else `init(rng)` jitted so that parameters are created already sharded."""
    if ckpt.latest_step() is not None:
        state = ckpt.restore(sharded_abstract(abstract, shardings), data_iter=data_iter)
        log.info("resumed from step %d", int(state["step"]))
        return state
    return jax.jit(init, out_shardings=shardings)(rng)


def restore_on_one_device(workdir: str, build_state_fns: Callable, what: str,
                          step: int | None = None):
    """(config, graphdef(s), state) of a finished or running workdir, restored onto one device
    (for evaluation, extraction and export). `build_state_fns(config, mesh)` is the trainer's."""
    from vasa_jax.errors import ConfigError

    config = load_config(workdir, f"a {what}")
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    graphdefs, _, abstract, shardings = build_state_fns(config, mesh)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    with Checkpointer(ckpt_dir) as ckpt:
        if ckpt.latest_step() is None:
            raise ConfigError(f"no checkpoint in {ckpt_dir}: train {what.replace('-', ' ')} first")
        state = ckpt.restore(sharded_abstract(abstract, shardings), step=step)
    return config, graphdefs, state


def run(config, workdir: str, *, state: Any, train_step: Callable, data_iter,
        to_device: Callable[[dict], Any], ckpt: Checkpointer,
        on_sample: Callable[[Any, Any, int], None] | None = None) -> dict:
    """Steps until `config.steps` (or `config.max_train_minutes`); returns the last metrics.

    Logs every `config.log_every` steps, calls `on_sample(state, device_batch, step)` every
    `config.sample_every` steps (if given), saves on the checkpointer's interval and at the
    end. Non-finite metrics raise `NonFiniteLossError` before anything is saved. The time
    budget is counted from the end of the first (compiling) step of this process and checked
    once the previous step has finished, so a run stops at most one step past it (checked at
    dispatch alone, the host ran ahead of the CPU and a 30-minute run finished at 30.3).
    """
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    timer = StepTimer()
    step = int(state["step"])
    last_good = ckpt.latest_step()
    metrics: dict = {}
    budget_s = float(config.get("max_train_minutes", 0.0) or 0.0) * 60.0
    sample_every = int(config.get("sample_every", 0) or 0)
    start = None
    previous = None  # the last step's metrics: waited on before reading the clock
    out_of_time = False
    try:
        while step < config.steps and not out_of_time:
            batch = to_device(next(data_iter))
            if start is None:  # multi-process: every process compiles before any steps
                train_step = distributed.compile_then_meet(train_step, (state, batch),
                                                           "train_step")
            state, metrics = train_step(state, batch)
            step += 1
            if start is None:
                jax.block_until_ready(metrics)
                start = time.perf_counter()
            elif budget_s > 0:
                # One step stays in flight (this one), so the host cannot run far ahead.
                jax.block_until_ready(previous)
                if time.perf_counter() - start >= budget_s:
                    out_of_time = True
                    log.info("stopping at step %d: max_train_minutes=%g reached", step,
                             config.max_train_minutes)
            previous = metrics
            last = step == config.steps or out_of_time
            will_save = ckpt.should_save(step) or last
            logged = step % config.log_every == 0 or last
            if logged or will_save:
                host = jax.device_get(metrics)
                # Checked before any save, so a non-finite state never becomes a checkpoint.
                check_finite(step, host, last_good)
                if logged:
                    host["steps_per_s"] = timer.tick(step)
                    host["train_minutes"] = (time.perf_counter() - start) / 60.0
                    writer.write(step, host)
            if on_sample is not None and ((sample_every and step % sample_every == 0) or last):
                on_sample(state, batch, step)
            if will_save and ckpt.save(step, state, data_iter=data_iter, force=True):
                last_good = step
    finally:
        ckpt.close()
        writer.close()
    return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
