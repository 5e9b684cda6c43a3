"""Checkpoints of a run: the train state (orbax) and the data iterator state, saved together.

A checkpoint is one orbax step directory under `RUN_DIR/checkpoints/` with three items:
`state` (params, optimizer state, step, rng: arrays, restored onto the given shardings),
`data` (the grain iterator state as JSON, so a resumed run continues the same token order)
and `meta` (JSON: tokens seen, epoch, wall time). Orbax writes into a temporary directory
and renames it when complete, so a crash never leaves a half-written checkpoint behind.

Which steps are kept: the latest `keep`, and the checkpoint with the lowest validation loss
among those saved with one (`save(..., val_loss=...)`), so that the run's best checkpoint
can be scored again at the end (a diffusion run's selected checkpoint is rescored with fresh
Monte Carlo samples: the minimum of noisy estimates is biased low).
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from typing import Any

import orbax.checkpoint as ocp


@contextlib.contextmanager
def _absl_warnings_off():
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


class Checkpointer:
  """Saves and restores (state, data_state, meta) triples by step."""

  def __init__(self, directory: str | pathlib.Path, *, keep: int = 2, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    # Read-only (a loaded run): the options orbax would otherwise reset with a warning each.
    cms = ocp.checkpoint_managers
    policy = None if read_only else cms.AnyPreservationPolicy([
        cms.LatestN(n=keep),
        cms.BestN(get_metric_fn=lambda m: m['val_loss'], reverse=True, n=1,
                  keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1,
        # Saving overlaps training; `wait` is called before anything reads the result.
        enable_async_checkpointing=not read_only)
    # Orbax also logs a warning that a read-only directory is read only.
    quiet = _absl_warnings_off() if read_only else contextlib.nullcontext()
    with quiet:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_names=('state', 'data', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, meta: dict,
           val_loss: float | None = None) -> None:
    """Saves step `step`; `val_loss` (the validation loss at this step) makes it a candidate
    for the best checkpoint, which is kept beyond the latest `keep`."""
    metrics = None if val_loss is None else {'val_loss': float(val_loss)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """Restores onto the shardings and dtypes of `abstract_state` (ShapeDtypeStructs)."""
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return out['state'], out['data'], out['meta']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
