"""Multiple-choice tasks, named by a spec string: `code_cloze` or `NAME:PATH`.

    items = load_task('hellaswag:/data/hellaswag/hellaswag_val.jsonl', val_fraction=0.02)
    metrics = harness.evaluate_mc(score, tokenizer, items, max_len=2048)

`code_cloze` is embedded (held-out standard-library files, `code_cloze.py`); the standard
benchmarks read their official files from a local path (`benchmarks.py`): hellaswag, mmlu,
arc_easy, arc_challenge, piqa, winogrande.
"""

from __future__ import annotations

import functools

from dlmjax.errors import UserError
from dlmjax.eval.tasks import benchmarks, code_cloze
from dlmjax.eval.tasks.harness import MCItem

EMBEDDED = ('code_cloze',)
FROM_FILE = {
    'hellaswag': benchmarks.hellaswag,
    'mmlu': benchmarks.mmlu,
    'arc_easy': functools.partial(benchmarks.arc, task='arc_easy'),
    'arc_challenge': functools.partial(benchmarks.arc, task='arc_challenge'),
    'piqa': benchmarks.piqa,
    'winogrande': benchmarks.winogrande,
}


def names() -> tuple[str, ...]:
  return EMBEDDED + tuple(FROM_FILE)


def split_specs(specs: str) -> list[str]:
  """'code_cloze, hellaswag:/x.jsonl' -> ['code_cloze', 'hellaswag:/x.jsonl']."""
  return [s.strip() for s in specs.split(',') if s.strip()]


def task_name(spec: str) -> str:
  return spec.split(':', 1)[0]


def check_spec(spec: str) -> None:
  """Raises UserError for an unknown task or a file task without its path."""
  name, _, path = spec.partition(':')
  if name not in names():
    raise UserError(f'unknown task {name!r}; known: {", ".join(names())}')
  if name in FROM_FILE and not path:
    raise UserError(f'task {name} reads its official file: give {name}:PATH')
  if name in EMBEDDED and path:
    raise UserError(f'task {name} is embedded and takes no path')


def load_task(spec: str, *, val_fraction: float) -> list[MCItem]:
  """The items of the task `spec`; `val_fraction` selects code_cloze's held-out files."""
  check_spec(spec)
  name, _, path = spec.partition(':')
  if name == 'code_cloze':
    return code_cloze.code_cloze(val_fraction)
  items = FROM_FILE[name](path)
  if not items:
    raise UserError(f'task {name}: {path!r} holds no items')
  return items
