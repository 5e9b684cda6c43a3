"""TensorBoard event files and optional Weights & Biases logging, beside the JSON logs.

metrics.jsonl and eval.jsonl stay the run's record; RUN_DIR/tensorboard/ is a view of them
that TensorBoard reads (`tensorboard --logdir RUN_DIR/tensorboard`, or
`python -m experiments.grid tensorboard NAME` for a whole grid, one run beside another).

Tags, against the training step:
    train/loss, train/lr, train/grad_norm, train/tokens_per_s, train/mfu, train/epoch, and
    any other number a step reports (the MoE's train/moe_lb_loss, train/moe_max_load, ...)
    val/loss (nats/token), val/loss_stderr, val/bits_per_byte, val/bits_per_byte_stderr
    tasks/NAME/acc, tasks/NAME/acc_stderr, tasks/NAME/acc_norm

Written by process 0 in tensorboard's own record format (no TensorFlow), in the training's
thread, each record handed to the OS as it is logged. On resume the event directory is
rebuilt from the JSON logs, which resume truncates to the checkpoint's step: every step then
appears once, in any reader (the older "orphaned data" purge is done by some readers only).
W&B logs the same records under the same tags when `train.wandb` names a project (the
`wandb` package, installed by the user; never required).
"""

from __future__ import annotations

import itertools
import math
import os
import pathlib
import shutil
import socket
import time
from typing import Any

from dlmjax.errors import UserError
from dlmjax.rundir import RunDir, read_jsonl

# What metrics.jsonl records that is not a value to plot.
_NOT_SCALARS = ('step', 'tokens_seen')


def train_scalars(rec: dict) -> dict[str, float]:
  """The tags of one metrics.jsonl record."""
  return {f'train/{k}': float(v) for k, v in rec.items()
          if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def eval_scalars(rec: dict) -> dict[str, float]:
  """The tags of one eval.jsonl record: validation (when it has it) and task scores."""
  out = {}
  if 'val_loss' in rec:
    out['val/loss'] = rec['val_loss']
    out['val/loss_stderr'] = rec['val_loss_stderr']
    out['val/bits_per_byte'] = rec['val_bits_per_byte']
    # bits/byte is nats/token times one constant of the validation set.
    scale = rec['val_bits_per_byte'] / rec['val_loss'] if rec['val_loss'] else 0.0
    out['val/bits_per_byte_stderr'] = rec['val_loss_stderr'] * scale
  for name, task in rec.get('tasks', {}).items():
    for key in ('acc', 'acc_stderr', 'acc_norm'):
      if isinstance(task.get(key), (int, float)):
        out[f'tasks/{name}/{key}'] = task[key]
  return {k: float(v) for k, v in out.items()}


class EventWriter:
  """Scalars into one TensorBoard event file under `logdir`, written in the calling thread.

  tensorboard's EventFileWriter writes from a thread of its own, which on a full disk dies
  with a traceback and raises later from an unrelated call; here a failed write raises its
  OSError where it happens, and the training's full-disk handling reports it in one line.
  """

  def __init__(self, logdir: pathlib.Path):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    logdir.mkdir(parents=True, exist_ok=True)
    # The name TensorBoard looks for (events.out.tfevents.*), unique per writer.
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.{next(_WRITERS)}')
    self._file = open(logdir / name, 'wb')
    self._records = RecordWriter(self._file)
    self._write(event_pb2.Event(file_version='brain.Event:2'))
    self.flush()

  def _write(self, event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def scalars(self, step: int, values: dict[str, float]) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    vals = [summary_pb2.Summary.Value(tag=tag, simple_value=v)
            for tag, v in values.items() if math.isfinite(v)]
    if vals:
      self._write(event_pb2.Event(step=int(step), summary=summary_pb2.Summary(value=vals)))
      self.flush()  # a live TensorBoard sees each record as it is logged

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


_WRITERS = itertools.count()


class _WandB:
  """W&B's run for this run directory: one id per directory, so a resumed run continues it."""

  def __init__(self, project: str, rd: RunDir, config: dict, name: str):
    try:
      import wandb
    except ImportError:
      raise UserError(f'train.wandb={project!r} needs the wandb package (pip install wandb); '
                      f'set train.wandb= to log to TensorBoard only') from None
    import hashlib
    run_id = hashlib.sha256(str(rd.path.resolve()).encode()).hexdigest()[:16]
    self._run = wandb.init(project=project, id=run_id, name=name or rd.path.name,
                           config=config, dir=str(rd.path), resume='allow')

  def log(self, step: int, values: dict[str, float]) -> None:
    self._run.log(values, step=int(step))

  def close(self) -> None:
    self._run.finish()


class Summaries:
  """What a training run sends to TensorBoard (and W&B): its metrics and eval records.

  `enabled=False` (every process but 0) makes each call a no-op.
  """

  def __init__(self, rd: RunDir, start_step: int, *, enabled: bool = True,
               tensorboard: bool = True, wandb_project: str = '', config: dict | None = None,
               name: str = ''):
    self._tb = self._wandb = None
    if not enabled:
      return
    if tensorboard:
      logdir = rd.path / 'tensorboard'
      shutil.rmtree(logdir, ignore_errors=True)
      self._tb = EventWriter(logdir)
      if start_step:  # the JSON logs were truncated to the checkpoint: replay them
        for rec in read_jsonl(rd.metrics):
          self._tb.scalars(rec['step'], train_scalars(rec))
        for rec in read_jsonl(rd.evals):
          self._tb.scalars(rec['step'], eval_scalars(rec))
    if wandb_project:
      # W&B keeps what it was sent; a resumed run sends from the checkpoint on.
      self._wandb = _WandB(wandb_project, rd, config or {}, name)

  def _send(self, step: int, values: dict[str, float]) -> None:
    if self._tb:
      self._tb.scalars(step, values)
    if self._wandb:
      self._wandb.log(step, values)

  def train(self, rec: dict) -> None:
    self._send(rec['step'], train_scalars(rec))

  def eval(self, rec: dict) -> None:
    self._send(rec['step'], eval_scalars(rec))

  def close(self) -> None:
    if self._tb:
      self._tb.close()
    if self._wandb:
      self._wandb.close()


def read_scalars(logdir: str | pathlib.Path) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in the event files under `logdir`, as {tag: [(step, value), ...]}, read
  with tensorboard's own event reader (what `tensorboard --logdir` shows)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(logdir), size_guidance={'scalars': 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def add_task_scores(rd: RunDir, rec: dict) -> None:
  """Appends a later evaluation's task scores (`python -m dlmjax.eval`) to the run's events."""
  if not (rd.path / 'tensorboard').is_dir():
    return
  w = EventWriter(rd.path / 'tensorboard')
  w.scalars(rec['step'], eval_scalars(rec))
  w.close()


def grid_logdir_spec(runs: dict[str, Any]) -> str:
  """`--logdir_spec` for TensorBoard: NAME:RUN_DIR/tensorboard for each run that has one."""
  for name in runs:
    if ':' in name or ',' in name:
      raise UserError(f'run name {name!r} cannot be given to tensorboard (it holds ":" or ",")')
  return ','.join(f'{name}:{pathlib.Path(d) / "tensorboard"}' for name, d in runs.items()
                  if (pathlib.Path(d) / 'tensorboard').is_dir())
