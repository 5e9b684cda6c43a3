"""Progress display for long loops: a rich bar with ETA on a terminal, plain lines otherwise.

Logs (a grid's log file, CI) get one line per logging step instead of a redrawn bar.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


def bar(total: int | None, description: str, stream=None) -> Progress | None:
  """A rich progress bar with ETA on `stream` (stderr) when it is a terminal; else None.
  The caller starts, advances and stops it (e.g. a corpus being tokenized)."""
  stream = stream or sys.stderr
  if not stream.isatty():
    return None
  progress = Progress(TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=stream),
                      transient=True)
  progress.add_task(description, total=total)
  return progress


class StepProgress:
  """`with StepProgress(total, start) as p: p.update(step, metrics)`."""

  def __init__(self, total: int, start: int = 0, *, enabled: bool = True, label: str = 'train'):
    self.total = total
    self.enabled = enabled
    self.interactive = enabled and sys.stderr.isatty()
    self._bar = None
    if self.interactive:
      self._bar = Progress(
          TextColumn('[bold]{task.description}'), BarColumn(), MofNCompleteColumn(),
          TimeElapsedColumn(), TextColumn('eta'), TimeRemainingColumn(),
          TextColumn('{task.fields[info]}'), console=Console(stderr=True), transient=False)
      self._task = self._bar.add_task(label, total=total, completed=start, info='')

  def __enter__(self) -> 'StepProgress':
    if self._bar is not None:
      self._bar.start()
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.stop()
      self._bar = None

  def update(self, step: int, metrics: dict) -> None:
    self.set(step, f'loss {metrics["loss"]:.4f}  {metrics.get("tokens_per_s", 0):,.0f} tok/s')

  def set(self, done: int, info: str = '') -> None:
    """Moves the bar to `done` of `total` (a plain line per call when not on a terminal)."""
    if self._bar is not None:
      self._bar.update(self._task, completed=done, info=info)
    elif self.enabled:
      print(f'step {done}/{self.total}  {info}', flush=True)

  def note(self, text: str) -> None:
    if self._bar is not None:
      self._bar.console.print(text)
    elif self.enabled:
      print(text, flush=True)
