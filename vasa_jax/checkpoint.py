"""Checkpoint I/O: orbax CheckpointManager holding the train state and the data iterator together.

    ckpt = Checkpointer(workdir / "checkpoints", save_interval_steps=500)
    ckpt.save(step, state, data_iter=it)            # async; state and iterator in one orbax step
    state = ckpt.restore(abstract_state, data_iter=fresh_it)   # latest step, onto any mesh

`abstract_state` is a pytree of `jax.ShapeDtypeStruct`s carrying the *new* shardings (from
`jax.eval_shape` + the partition rules), so a checkpoint written on one mesh lands on another.
No pickle: orbax writes tensorstore arrays, grain writes its iterator state as JSON.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _grain_checkpoint():
    import grain  # imported lazily: inference never needs it

    return grain.checkpoint


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` with items `state` and (optionally) `data_iter`."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
                 save_interval_steps: int = 1, async_save: bool = True):
        directory = os.fspath(directory)
        # A bucket path (gs://..., s3://...) goes to orbax/tensorstore as it is.
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -- saving -------------------------------------------------------------------------------
    def save(self, step: int, state: Any, data_iter: Any = None, *, force: bool = False) -> bool:
        """Saves `state` (a pytree of jax.Arrays) and the iterator's position as one step."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            items["data_iter"] = _grain_checkpoint().CheckpointSave(data_iter)
        return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

    def should_save(self, step: int) -> bool:
        """Whether `step` falls on the save interval."""
        return self._manager.should_save(int(step))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    # -- restoring ----------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, abstract_state: Any, data_iter: Any = None, step: int | None = None) -> Any:
        """Restores `step` (default: the latest) onto the shardings in `abstract_state`.

        If `data_iter` is given, its position is restored in place. Raises FileNotFoundError
        when there is no checkpoint.
        """
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        target = jax.tree.map(_as_abstract, abstract_state)
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iter is not None:
            items["data_iter"] = _grain_checkpoint().CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
