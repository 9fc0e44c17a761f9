"""Orbax checkpoints of a training run: the TrainState plus a JSON record (data cursor, config).

`<workdir>/checkpoints/<step>/{state, meta}`; saves are asynchronous, the last `keep` are kept,
and an interrupted save never becomes the "latest" checkpoint (orbax commits atomically), so a
crash leaves the last good state readable and a rerun resumes from it. Paths may be local or any
URL orbax/tensorstore supports (e.g. `gs://bucket/run`).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class RunCheckpointer:
    """Thin wrapper over `ocp.CheckpointManager` for (state pytree, JSON meta) pairs."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = directory
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._mngr = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def all_steps(self):
        return list(self._mngr.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        return self._mngr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def read_meta(self, step: int) -> dict:
        """The JSON record of `step` alone (no arrays are read)."""
        return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def step_path(self, step: int) -> str:
        """The directory of checkpoint `step`."""
        return f"{str(self.directory).rstrip('/')}/{step}"

    def reload(self) -> None:
        """Re-read the list of checkpoints from storage (after one was moved away)."""
        self._mngr.reload()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restore `step` into arrays shaped and sharded like `abstract_state`
        (a pytree of arrays or `jax.ShapeDtypeStruct`s with shardings)."""
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), abstract_state
        )
        out = self._mngr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        )
        return out["state"], out["meta"]

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()
