"""Loaders for the standard benchmarks, from their official files on a local path.

Nothing is downloaded: point a task at the file (or directory) the benchmark's authors
distribute. Prompts and choices are built as lm-eval (0.4) builds them for its zero-shot
tasks of the same name, so accuracies compare with published lm-eval numbers.

| task | official file(s) | prompt (context) | choices |
|---|---|---|---|
| hellaswag | `hellaswag_val.jsonl` (rowanz/hellaswag) | `activity_label: ctx_a Ctx_b`, cleaned | the 4 endings, cleaned |
| mmlu | `data/test/SUBJECT_test.csv` (hendrycks/test; a file or a directory) | subject header, question, `A. .. D.`, `Answer:` | ` A` .. ` D` |
| arc_easy, arc_challenge | `ARC-{Easy,Challenge}-Test.jsonl` (ARC-V1-Feb2018) | `Question: ...\\nAnswer:` | the answer texts |
| piqa | `valid.jsonl` + `valid-labels.lst` beside it | `Question: goal\\nAnswer:` | sol1, sol2 |
| winogrande | `dev.jsonl` (winogrande_1.1) | the sentence up to `_`, with each option | the rest of the sentence |

Each loader returns `MCItem`s; a missing file or a malformed record is a `UserError` naming
the file and line.
"""

from __future__ import annotations

import csv
import json
import pathlib
import re
from typing import Iterator

from dlmjax.errors import UserError
from dlmjax.eval.tasks.harness import MCItem


def _path(task: str, path: str) -> pathlib.Path:
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise UserError(f'task {task}: {path!r} does not exist (give the official file, e.g. '
                    f'{task}:/data/{task}/...)')
  return p


def _jsonl(task: str, path: pathlib.Path) -> Iterator[tuple[str, dict]]:
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if line.strip():
        try:
          yield f'{path.name}:{n}', json.loads(line)
        except json.JSONDecodeError as e:
          raise UserError(f'task {task}: {path}:{n} is not JSON ({e.msg})') from None


def _field(task: str, where: str, record: dict, *keys: str):
  value = record
  for key in keys:
    if not isinstance(value, dict) or key not in value:
      raise UserError(f'task {task}: {where} has no field {".".join(keys)!r}; is this the '
                      f'official {task} file?')
    value = value[key]
  return value


def _choice_item(where: str, context: str, choices: list[str], gold: int) -> MCItem:
  # lm-eval joins context and choice with its default target delimiter, one space.
  return MCItem(tuple((context, f' {c}') for c in choices), tuple(choices), gold, where)


# ---------------------------------------------------------------------------------------
# HellaSwag

def _hellaswag_clean(text: str) -> str:
  # The WikiHow half of HellaSwag carries bracketed markup ("[title]", "[step]"); lm-eval
  # turns " [title]" into a sentence break and drops the other brackets.
  text = text.strip().replace(' [title]', '. ')
  text = re.sub(r'\[.*?\]', '', text)
  return text.replace('  ', ' ')


def hellaswag(path: str) -> list[MCItem]:
  items = []
  for where, r in _jsonl('hellaswag', _path('hellaswag', path)):
    ctx = _field('hellaswag', where, r, 'ctx_a') + ' ' + _field('hellaswag', where, r,
                                                                  'ctx_b').capitalize()
    query = _hellaswag_clean(_field('hellaswag', where, r, 'activity_label') + ': ' + ctx)
    endings = [_hellaswag_clean(e) for e in _field('hellaswag', where, r, 'endings')]
    label = _field('hellaswag', where, r, 'label')
    if label in ('', None):
      raise UserError(f'task hellaswag: {where} has no label (the test split is unlabelled; '
                      f'use hellaswag_val.jsonl)')
    items.append(_choice_item(where, query, endings, int(label)))
  return items


# ---------------------------------------------------------------------------------------
# MMLU

MMLU_LETTERS = ('A', 'B', 'C', 'D')


def _mmlu_subject(csv_path: pathlib.Path) -> str:
  stem = csv_path.stem
  for split in ('_test', '_val', '_dev'):
    if stem.endswith(split):
      return stem[:-len(split)]
  return stem


def mmlu(path: str) -> list[MCItem]:
  """One subject's csv (question, A, B, C, D, answer; no header) or a directory of them
  (`*_test.csv`, searched recursively)."""
  p = _path('mmlu', path)
  files = sorted(p.rglob('*_test.csv')) if p.is_dir() else [p]
  if not files:
    raise UserError(f'task mmlu: no *_test.csv under {path!r} (the official data/test folder)')
  items = []
  for f in files:
    subject = _mmlu_subject(f).replace('_', ' ')
    header = f'The following are multiple choice questions (with answers) about {subject}.\n\n'
    with open(f, newline='', encoding='utf-8') as fh:
      for n, row in enumerate(csv.reader(fh), 1):
        where = f'{f.name}:{n}'
        if len(row) != 6 or row[5].strip() not in MMLU_LETTERS:
          raise UserError(f'task mmlu: {where} is not "question,A,B,C,D,answer" with answer '
                          f'in A-D')
        question, *options, answer = row
        body = '\n'.join(f'{letter}. {o}' for letter, o in zip(MMLU_LETTERS, options))
        context = f'{header}{question.strip()}\n{body}\nAnswer:'
        items.append(_choice_item(where, context, list(MMLU_LETTERS),
                                  MMLU_LETTERS.index(answer.strip())))
  return items


# ---------------------------------------------------------------------------------------
# ARC (Easy and Challenge share the format)

def arc(path: str, task: str = 'arc') -> list[MCItem]:
  items = []
  for where, r in _jsonl(task, _path(task, path)):
    stem = _field(task, where, r, 'question', 'stem')
    choices = _field(task, where, r, 'question', 'choices')
    labels = [c['label'] for c in choices]
    key = _field(task, where, r, 'answerKey')
    if key not in labels:
      raise UserError(f'task {task}: {where}: answerKey {key!r} is not one of {labels}')
    items.append(_choice_item(r.get('id', where), f'Question: {stem}\nAnswer:',
                              [c['text'] for c in choices], labels.index(key)))
  return items


# ---------------------------------------------------------------------------------------
# PIQA

def piqa(path: str) -> list[MCItem]:
  """`valid.jsonl` (goal, sol1, sol2) and its labels file `valid-labels.lst` beside it."""
  p = _path('piqa', path)
  labels_path = p.with_name(p.name.removesuffix('.jsonl') + '-labels.lst')
  if not labels_path.is_file():
    raise UserError(f'task piqa: the labels file {str(labels_path)!r} is missing (the official '
                    f'release ships it beside {p.name})')
  labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
  records = list(_jsonl('piqa', p))
  if len(labels) != len(records):
    raise UserError(f'task piqa: {p.name} has {len(records)} records but {labels_path.name} '
                    f'{len(labels)} labels')
  items = []
  for (where, r), label in zip(records, labels):
    sols = [_field('piqa', where, r, 'sol1'), _field('piqa', where, r, 'sol2')]
    goal = _field('piqa', where, r, 'goal')
    items.append(_choice_item(where, f'Question: {goal}\nAnswer:', sols, int(label)))
  return items


# ---------------------------------------------------------------------------------------
# WinoGrande

def winogrande(path: str) -> list[MCItem]:
  """Partial scoring, as lm-eval: each option fills the blank in the context, and the rest of
  the sentence after the blank is the continuation scored under both."""
  items = []
  for where, r in _jsonl('winogrande', _path('winogrande', path)):
    sentence = _field('winogrande', where, r, 'sentence')
    if '_' not in sentence:
      raise UserError(f'task winogrande: {where}: the sentence has no blank "_"')
    blank = sentence.index('_')
    rest = sentence[blank + 1:].strip()
    contexts = [sentence[:blank] + _field('winogrande', where, r, key)
                for key in ('option1', 'option2')]
    answer = _field('winogrande', where, r, 'answer')
    if answer not in ('1', '2'):
      raise UserError(f'task winogrande: {where}: answer {answer!r} is not "1" or "2" '
                      f'(the unlabelled test split cannot be scored)')
    items.append(MCItem(tuple((c, f' {rest}') for c in contexts), tuple(contexts),
                        int(answer) - 1, r.get('qID', where)))
  return items
