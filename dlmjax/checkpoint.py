"""Checkpoints of a run: the train state (orbax) and the data iterator state, saved together.

A checkpoint is one orbax step directory under `RUN_DIR/checkpoints/` with three items:
`state` (params, optimizer state, step, rng: arrays, restored onto the given shardings),
`data` (the grain iterator state as JSON, so a resumed run continues the same token order)
and `meta` (JSON: tokens seen, epoch, wall time). Orbax writes into a temporary directory
and renames it when complete, so a crash never leaves a half-written checkpoint behind.

What orbax does not catch is a checkpoint damaged after it was written (a truncated file, a
flipped byte on a bad disk or a partial copy between machines): its array files carry no
checksums. So each finished step is sealed with a manifest (`dlmjax_manifest.json` inside
the step directory: every file's size and SHA-256), and `restore_latest` checks it before it
trusts a step. A step that fails the check or fails to restore is moved aside to
`RUN_DIR/checkpoints.bad/` (never deleted) with one log line saying which and why, and the
step before it is tried. A step finished but not yet sealed (killed in between) is trusted
if orbax restores it, and sealed then.

Which steps are kept: the latest `keep`, and the checkpoint with the lowest validation loss
among those saved with one (`save(..., val_loss=...)`), so that the run's best checkpoint
can be scored again at the end (a diffusion run's selected checkpoint is rescored with fresh
Monte Carlo samples: the minimum of noisy estimates is biased low).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from dlmjax.errors import UserError
from dlmjax.rundir import write_json_atomic

MANIFEST = 'dlmjax_manifest.json'
_CHUNK = 1 << 22


class CorruptCheckpoint(UserError):
  """A checkpoint step whose files do not match its manifest (reported as one line)."""

  def __init__(self, step: int, directory: pathlib.Path, problem: str):
    super().__init__(f'checkpoint step {step} in {directory}: {problem}')
    self.problem = problem


def _digest(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while block := f.read(_CHUNK):
      h.update(block)
  return h.hexdigest()


def _files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in step_dir.rglob('*') if p.is_file() and p.name != MANIFEST)


def seal(step_dir: pathlib.Path) -> None:
  """Writes the manifest of a finished step directory (sizes and SHA-256 of its files)."""
  files = {str(p.relative_to(step_dir)): [p.stat().st_size, _digest(p)] for p in _files(step_dir)}
  write_json_atomic(step_dir / MANIFEST, {'files': files})


def check(step_dir: pathlib.Path) -> str | None:
  """What is wrong with a sealed step directory (naming the file), None if it matches its
  manifest; raises FileNotFoundError when it has no manifest."""
  try:
    listed = json.loads((step_dir / MANIFEST).read_text())['files']
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    return f'{MANIFEST} is unreadable ({type(e).__name__})'
  present = {str(p.relative_to(step_dir)) for p in _files(step_dir)}
  for rel, (size, digest) in sorted(listed.items()):
    path = step_dir / rel
    if rel not in present:
      return f'{rel} is missing'
    if path.stat().st_size != size:
      return f'{rel} has {path.stat().st_size} bytes, {size} when written'
    if _digest(path) != digest:
      return f'{rel} does not match its SHA-256 from when it was written'
  extra = sorted(present - set(listed))
  return f'{extra[0]} was not part of it when written' if extra else None


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)


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
    self.read_only = read_only
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

  def step_dir(self, step: int) -> pathlib.Path:
    return self.directory / str(step)

  def _seal_finished(self) -> None:
    """Seals every finished step that has no manifest yet (process 0; call after a wait)."""
    if self.read_only or jax.process_index() != 0:
      return
    for step in self._manager.all_steps():
      d = self.step_dir(step)
      if d.is_dir() and not (d / MANIFEST).exists():
        seal(d)

  def verify(self, step: int) -> str | None:
    """What is wrong with step `step`'s files, or None (also when it is not sealed yet)."""
    try:
      return check(self.step_dir(step))
    except FileNotFoundError:
      return None

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict, dict] | None:
    """(step, state, data_state, meta) of the newest usable checkpoint, None if there is none.

    A step whose files fail their manifest or that orbax cannot read is moved to
    `checkpoints.bad/` with a log line naming the step, the file and the step tried next."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, data, meta = self.restore(step, abstract_state)  # checks the manifest first
      except CorruptCheckpoint as e:
        problem = e.problem
      except Exception as e:  # orbax, tensorstore and JSON raise many kinds
        problem = f'orbax cannot restore it: {type(e).__name__}: {str(e).splitlines()[0][:200]}'
      else:
        self._seal_finished()
        return step, state, data, meta
      self._set_aside(step, problem)
    return None

  def _set_aside(self, step: int, problem: str) -> None:
    bad = self.directory.parent / f'{self.directory.name}.bad'
    target = bad / f'{step}-{time.strftime("%Y%m%dT%H%M%S")}'
    earlier = [s for s in self._manager.all_steps() if s < step]
    nxt = f'step {max(earlier)}' if earlier else 'none left: starting from scratch'
    if not self.read_only and jax.process_index() == 0:
      bad.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.step_dir(step)), str(target))
      where = f'moved to {target}'
    else:
      where = 'left in place (read only)'
    _log(f'warning: checkpoint step {step} in {self.directory} is unusable: {problem}; '
         f'{where}; trying {nxt}')
    if not self.read_only:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f'dlmjax-set-aside-{step}')
      self._manager.reload()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, meta: dict,
           val_loss: float | None = None) -> None:
    """Saves step `step`; `val_loss` (the validation loss at this step) makes it a candidate
    for the best checkpoint, which is kept beyond the latest `keep`."""
    metrics = None if val_loss is None else {'val_loss': float(val_loss)}
    self._manager.wait_until_finished()
    self._seal_finished()
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """Restores onto the shardings and dtypes of `abstract_state` (ShapeDtypeStructs);
    raises CorruptCheckpoint when the step's files do not match its manifest."""
    problem = self.verify(step)
    if problem is not None:
      raise CorruptCheckpoint(step, self.directory, problem)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return out['state'], out['data'], out['meta']

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """The parameters of `step` alone, onto the shardings and dtypes of `abstract_params`
    (orbax's partial restore: the optimizer state is neither read nor described)."""
    problem = self.verify(step)
    if problem is not None:
      raise CorruptCheckpoint(step, self.directory, problem)
    item = {'params': abstract_params}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding,
                                                               dtype=a.dtype), item)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                     partial_restore=True)))
    return out['state']['params']

  def wait(self) -> None:
    self._manager.wait_until_finished()
    self._seal_finished()

  def close(self) -> None:
    self.wait()
    self._manager.close()
