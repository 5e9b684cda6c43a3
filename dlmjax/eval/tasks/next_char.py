"""Embedded next-character tasks on held-out standard-library files (no download).

Which files: the same held-out files as the code cloze (`code_cloze.held_out_files`: their
names hash below `data.val_fraction`, so a `stdlib` run never trains on them).

The question: here is a file up to some position; which character comes next? The choices
are a fixed set of characters (one token each with the byte tokenizer), the context is the
file's text before the position, and each choice is scored as log p(character | context).
Four tasks, each a different use of context:

  next_op        the operator after a token: one of ( . , : =  (chance 1/5). Syntax: a call,
                 an attribute, a tuple, a block or slice, an assignment.
  close_bracket  the closing bracket: ) or ]  (chance 1/2). Needs which bracket is open, often
                 many characters back.
  close_quote    the closing quote of a one-line string: ' or "  (chance 1/2). Needs the
                 opening quote, and the file's habit.
  ident_char     the next letter inside an identifier, after its first two characters: one of
                 a e i n o r s t  (chance 1/8). Copying names used earlier in the file.

Positions come from Python's own `tokenize` of each file, so brackets and quotes inside
strings or comments are never asked, and none follows whitespace (the harness would move it
into the continuation). Balanced by construction: every choice is the right
answer of the same number of items (the smallest class decides), drawn uniformly from its
class after a per-file cap (so one long table, encodings/cp437.py, does not make a task). A
scorer that ignores the context ranks the choices the same way for every item, so it is right
on exactly one class's items: chance is 1 / (number of choices) exactly, for acc and acc_norm
alike (every choice is one character).

Fair to AR and MDM: both score one character given the same left context (the MDM sees the
context and one masked position, never the text after it). One character is one token for
the byte tokenizer, where `ContinuationScorer` scores all choices of an item exactly in one
pass; a BPE run scores them through the general path.

Deterministic: files are read in name order and all draws are seeded by the task name, so the
items depend only on the Python version's standard library and `data.val_fraction`. Item ids
are FILE:LINE:COLUMN of the character asked; the first N items (`eval.task_items`) are a
uniform sample of the task with every class within one item of N / (number of choices).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import tokenize
from typing import Callable, Iterator

import numpy as np

from dlmjax.data import corpus as corpus_lib
from dlmjax.eval.tasks.code_cloze import held_out_files, task_seed
from dlmjax.eval.tasks.harness import MCItem

PER_FILE_CAP = 48  # positions per (file, class) before balancing


@dataclasses.dataclass(frozen=True)
class CharTask:
  name: str
  choices: str  # one character per choice, in a fixed order
  positions: Callable[[list[tokenize.TokenInfo]], Iterator[tuple[int, int]]]  # (row, col)
  num_items: int


def _operators(chars: str):
  """The positions of the operator tokens that are one of `chars`."""
  def positions(tokens):
    return (t.start for t in tokens if t.type == tokenize.OP and t.string in chars)
  return positions


def _closing_quotes(tokens):
  for t in tokens:
    if t.type != tokenize.STRING or t.start[0] != t.end[0]:
      continue
    # Unprefixed one-line strings only (f-strings tokenize in parts from Python 3.12 on).
    if t.string[:1] not in CLOSE_QUOTE.choices or t.string[:3] in ("'''", '"""'):
      continue
    yield t.end[0], t.end[1] - 1


def _ident_chars(tokens):
  for t in tokens:
    if t.type != tokenize.NAME:
      continue
    for j in range(2, len(t.string)):
      if t.string[j] in IDENT_CHAR.choices:
        yield t.start[0], t.start[1] + j


NEXT_OP = CharTask('next_op', '(.,:=', _operators('(.,:='), 1045)
CLOSE_BRACKET = CharTask('close_bracket', ')]', _operators(')]'), 370)
CLOSE_QUOTE = CharTask('close_quote', '\'"', _closing_quotes, 420)
IDENT_CHAR = CharTask('ident_char', 'aeinorst', _ident_chars, 1000)
TASKS = {t.name: t for t in (NEXT_OP, CLOSE_BRACKET, CLOSE_QUOTE, IDENT_CHAR)}


def _line_offsets(text: str) -> list[int]:
  offsets, total = [0], 0
  for line in text.splitlines(keepends=True):
    total += len(line)
    offsets.append(total)
  return offsets


def _tokens(text: str) -> list[tokenize.TokenInfo]:
  try:
    return list(tokenize.generate_tokens(io.StringIO(text).readline))
  except (tokenize.TokenError, SyntaxError, IndentationError):
    return []  # a file this Python cannot tokenize asks nothing


def task_positions(task: CharTask, docs: list[corpus_lib.Document]) -> dict[str, list]:
  """{choice: [(file, offset, row, col), ...]}: every position of each class, capped per file."""
  out: dict[str, list] = collections.defaultdict(list)
  for doc in sorted(docs, key=lambda d: d.name):
    offsets = _line_offsets(doc.text)
    by_class = collections.defaultdict(list)
    for row, col in task.positions(_tokens(doc.text)):
      at = offsets[row - 1] + col
      if at == 0 or doc.text[at - 1].isspace():
        # The harness moves a context's trailing whitespace into the continuation (as
        # lm-eval does), which would make the choice two characters: not asked.
        continue
      by_class[doc.text[at]].append((doc.name, at, row, col))
    for ch, found in by_class.items():
      if len(found) > PER_FILE_CAP:
        rng = np.random.default_rng(task_seed('next_char', task.name, doc.name, ch))
        found = [found[i] for i in sorted(rng.choice(len(found), PER_FILE_CAP, replace=False))]
      out[ch] += found
  return out


def char_items(task: CharTask, docs: list[corpus_lib.Document],
               num_items: int | None = None) -> list[MCItem]:
  """The task's items in one fixed order: balanced classes, interleaved so any prefix of the
  list is balanced too (see the module docstring)."""
  num_items = task.num_items if num_items is None else num_items
  pools = task_positions(task, docs)
  per_class = min([num_items // len(task.choices)] + [len(pools[ch]) for ch in task.choices])
  rng = np.random.default_rng(task_seed('next_char', task.name, 'items'))
  drawn = {ch: [pools[ch][i] for i in rng.choice(len(pools[ch]), per_class, replace=False)]
           for ch in task.choices}
  text = {d.name: d.text for d in docs}
  choices = tuple(task.choices)
  items = []
  for k in range(per_class):
    for j in rng.permutation(len(choices)):
      name, at, row, col = drawn[choices[j]][k]
      context = text[name][:at]
      items.append(MCItem(tuple((context, ch) for ch in choices), choices, int(j),
                          f'{name}:{row}:{col + 1}'))
  return items


def load(name: str, val_fraction: float) -> list[MCItem]:
  return char_items(TASKS[name], held_out_files(val_fraction))
