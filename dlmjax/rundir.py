"""The run directory: its files, written atomically, and read back.

    RUN_DIR/config.yaml      the resolved config (written at start)
    RUN_DIR/tokenizer/       the tokenizer the run was trained with
    RUN_DIR/metrics.jsonl    one line per logging step
    RUN_DIR/eval.jsonl       one line per validation eval
    RUN_DIR/checkpoints/     orbax step directories (dlmjax/checkpoint.py)
    RUN_DIR/checkpoints.bad/ damaged checkpoints set aside on resume, never deleted
    RUN_DIR/result.json      written last; a readable one means the run is complete
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any, Iterable


class RunDir:
  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)

  config = property(lambda self: self.path / 'config.yaml')
  tokenizer = property(lambda self: self.path / 'tokenizer')
  metrics = property(lambda self: self.path / 'metrics.jsonl')
  evals = property(lambda self: self.path / 'eval.jsonl')
  checkpoints = property(lambda self: self.path / 'checkpoints')
  result = property(lambda self: self.path / 'result.json')

  def read_result(self) -> dict | None:
    """result.json, or None when it is absent or damaged (not a JSON object: cut by a full
    disk or a partial copy; ours are written atomically)."""
    try:
      res = json.loads(self.result.read_bytes())
    except (OSError, ValueError):  # ValueError: JSONDecodeError and UnicodeDecodeError
      return None
    return res if isinstance(res, dict) else None

  def is_complete(self) -> bool:
    return self.read_result() is not None


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  """Writes via a temporary file in the same directory and an atomic rename."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + '\n')


def append_jsonl(path: pathlib.Path, record: dict) -> None:
  with open(path, 'a') as f:
    f.write(json.dumps(record) + '\n')


def read_jsonl(path: pathlib.Path) -> list[dict]:
  if not path.is_file():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass  # a line cut by a crash mid-write
  return out


def training_evals(path: pathlib.Path) -> list[dict]:
  """eval.jsonl records written by the training run; later evaluations
  (`python -m dlmjax.eval`) carry a `source` key and are left out."""
  return [r for r in read_jsonl(path) if 'source' not in r]


def truncate_jsonl(path: pathlib.Path, max_step: int) -> None:
  """Drops lines logged after `max_step`: a resumed run logs those steps again."""
  records = [r for r in read_jsonl(path) if r.get('step', 0) <= max_step]
  write_text_atomic(path, ''.join(json.dumps(r) + '\n' for r in records))


def jsonable(metrics: Iterable[tuple[str, Any]]) -> dict:
  return {k: (v.item() if hasattr(v, 'item') else v) for k, v in metrics}
