"""The embedded benchmark: a line cloze on held-out standard-library files (no download).

Which files: the `.py` files of the running Python's standard library that the token store
holds out for validation, i.e. whose name hashes below `data.val_fraction`
(`dlmjax.data.store.is_val_name`, the rule that builds the validation split). A run on the
`stdlib` corpus never trains on them; a run on any other corpus never saw the standard
library at all. With the default val_fraction 0.02 these are 13 files on Python 3.11
(collections/__init__.py, tempfile.py, traceback.py, ...).

An item: the file up to a line (the context), and four candidate lines: the true one and
three distractors drawn from the same file. Each candidate is scored as a continuation of the
same left context, `indentation + code + newline`. Eligible lines hold 8-60 characters of
code, are not comments, and occur once in their file; distractors have the same
indentation as the true line, so indentation gives nothing away. The true line is drawn
uniformly among eligible lines and the distractors uniformly among the other eligible lines
of its indentation, and the order of the four is shuffled: given the four texts, each is
equally likely to be the true one, so a scorer that ignores the context is right with
probability exactly 1/4, for acc and acc_norm alike. Chance level: 25%.

Fair to AR and MDM: both score log p(candidate line | the same left context); the diffusion
model sees the context and the masked candidate only, never the lines after it.

Deterministic: the draws are seeded by each file's name; items from all files are then put
in one fixed order, so the first N items (`eval.task_items`) spread over the files.
"""

from __future__ import annotations

import collections
import hashlib

import numpy as np

from dlmjax.data import corpus as corpus_lib
from dlmjax.data.store import is_val_name
from dlmjax.errors import UserError
from dlmjax.eval.tasks.harness import MCItem

NUM_CHOICES = 4
MIN_CHARS, MAX_CHARS = 8, 60  # code characters of an eligible line (indentation excluded)
MAX_ITEMS_PER_FILE = 48  # so that one long file does not make the benchmark


def _seed(name: str) -> int:
  return int.from_bytes(hashlib.sha1(f'code_cloze\0{name}'.encode()).digest()[:8], 'big')


def _eligible(lines: list[str]) -> dict[str, list[int]]:
  """Indentation -> indices of the lines that may be asked (or offered as distractors)."""
  counts = collections.Counter(line.strip() for line in lines)
  groups: dict[str, list[int]] = collections.defaultdict(list)
  for i, line in enumerate(lines):
    code = line.strip()
    if (MIN_CHARS <= len(code) <= MAX_CHARS and not code.startswith('#')
        and any(ch.isalnum() for ch in code) and counts[code] == 1):
      groups[line[:len(line) - len(line.lstrip())]].append(i)
  return {indent: idx for indent, idx in groups.items() if len(idx) >= NUM_CHOICES}


def file_items(name: str, text: str, max_items: int = MAX_ITEMS_PER_FILE) -> list[MCItem]:
  """The cloze items of one file, drawn with a generator seeded by its name."""
  lines = text.split('\n')
  groups = _eligible(lines)
  group_of = {i: indent for indent, idx in groups.items() for i in idx}
  rng = np.random.default_rng(_seed(name))
  targets = rng.permutation(sorted(group_of))[:max_items]
  items = []
  for t in targets:
    t = int(t)
    others = [i for i in groups[group_of[t]] if i != t]
    options = [t, *(int(i) for i in rng.choice(others, NUM_CHOICES - 1, replace=False))]
    order = rng.permutation(NUM_CHOICES)
    lines_shown = [lines[options[k]].rstrip() + '\n' for k in order]
    context = ''.join(line + '\n' for line in lines[:t])
    items.append(MCItem(tuple((context, c) for c in lines_shown), tuple(lines_shown),
                        int(np.flatnonzero(order == 0)[0]), f'{name}:{t + 1}'))
  return items


def held_out_files(val_fraction: float) -> list[corpus_lib.Document]:
  docs = [d for d in corpus_lib.open_corpus('stdlib').documents()
          if is_val_name(d.name, val_fraction)]
  if not docs:
    raise UserError(f'task code_cloze: no standard-library file is held out at '
                    f'data.val_fraction={val_fraction}')
  return docs


def code_cloze(val_fraction: float) -> list[MCItem]:
  """Every item of the held-out files, in one fixed order (see the module docstring)."""
  items = [item for doc in held_out_files(val_fraction) for item in file_items(doc.name, doc.text)]
  order = np.random.default_rng(0).permutation(len(items))
  return [items[i] for i in order]
