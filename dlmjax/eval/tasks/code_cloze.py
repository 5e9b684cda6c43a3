"""The embedded benchmark: a code cloze on held-out standard-library files (no download).

Which files: the `.py` files of the running Python's standard library that the token store
holds out for validation, i.e. whose name hashes below `data.val_fraction`
(`dlmjax.data.store.is_val_name`, the rule that builds the validation split). A run on the
`stdlib` corpus never trains on them; a run on any other corpus never saw the standard
library at all. With the default val_fraction 0.02 these are 13 files on Python 3.11
(collections/__init__.py, tempfile.py, traceback.py, ...).

The question: here is a line of code; which of four contexts does it continue? The choices
are four places in the held-out files: the text before the line's true position, and the
text before three other lines of the same indentation. Each choice is scored as
log p(line | that context): the same continuation under every choice, the partial scoring
lm-eval uses for WinoGrande. Why not "which of four lines follows this context": there the
choices are different lines, and for the CPU study's models (0.6M parameters, 2.9-4.5
bits/byte) how likely a line is by itself swamps how well it fits the context: on a
trained tiny AR run (U = 250K, 8 epochs) that form scored 23.3% (567 items), at chance,
while this one scores 33.5% (600 items, 4.4 standard errors above chance). Here the line's own probability is common to all choices and cancels, so
the log-likelihood decision is the Bayes decision, and `delta_nll` (NLL of the line under
the other contexts minus under its own) measures how much the model uses the context.

Eligible lines hold 8-60 characters of code, are not comments, and occur once in their
file. The pool: every eligible line, at most `POOL_PER_FILE` per file (a file-seeded
sample, so that one long table does not make the benchmark), in indentation groups of at
least four. The true line is drawn uniformly from the pool and the three others uniformly
from the rest of its indentation group, and the four contexts are shuffled. The four
(context, line) positions are therefore exchangeable: a scorer that looks only at the
contexts, or ignores them, is right with probability exactly 1/4. Chance level: 25%, for
acc and acc_norm alike (acc_norm equals acc here: every choice scores the same line).

Fair to AR and MDM: both score the same line tokens given the same left context; the
diffusion model sees the context and the masked line only, never the text after it.

Deterministic: files are read in name order and all draws are seeded, so the items depend
only on the Python version's standard library and `data.val_fraction`. The first N items
(`eval.task_items`) are a uniform sample of them.
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
POOL_PER_FILE = 96
NUM_ITEMS = 600


def task_seed(task: str, *parts: str) -> int:
  """A 64-bit seed from an embedded task's name and the parts of what is drawn."""
  return int.from_bytes(hashlib.sha1('\0'.join((task,) + parts).encode()).digest()[:8], 'big')


def eligible_lines(lines: list[str]) -> list[int]:
  """Indices of the lines that may be asked: 8-60 code characters, not a comment, unique."""
  counts = collections.Counter(line.strip() for line in lines)
  out = []
  for i, line in enumerate(lines):
    code = line.strip()
    if (MIN_CHARS <= len(code) <= MAX_CHARS and not code.startswith('#')
        and any(ch.isalnum() for ch in code) and counts[code] == 1):
      out.append(i)
  return out


def held_out_files(val_fraction: float) -> list[corpus_lib.Document]:
  docs = [d for d in corpus_lib.open_corpus('stdlib').documents()
          if is_val_name(d.name, val_fraction)]
  if not docs:
    raise UserError(f'task code_cloze: no standard-library file is held out at '
                    f'data.val_fraction={val_fraction}')
  return docs


def _indent(line: str) -> str:
  return line[:len(line) - len(line.lstrip())]


def code_cloze(val_fraction: float, num_items: int = NUM_ITEMS) -> list[MCItem]:
  """The items, in one fixed order (see the module docstring). Item ids are FILE:LINE of the
  line asked."""
  lines = {d.name: d.text.split('\n') for d in held_out_files(val_fraction)}
  groups: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
  for name in sorted(lines):
    picked = eligible_lines(lines[name])
    if len(picked) > POOL_PER_FILE:
      rng = np.random.default_rng(task_seed('code_cloze', name))
      picked = sorted(rng.choice(picked, POOL_PER_FILE, replace=False).tolist())
    for i in picked:
      groups[_indent(lines[name][i])].append((name, i))
  pool = [p for indent in sorted(groups) if len(groups[indent]) >= NUM_CHOICES
          for p in groups[indent]]
  rng = np.random.default_rng(task_seed('code_cloze', 'items'))
  items = []
  for k in rng.permutation(len(pool))[:num_items]:
    name, t = pool[k]
    line = lines[name][t].rstrip() + '\n'
    group = [p for p in groups[_indent(line)] if p != (name, t)]
    places = [(name, t)] + [group[j] for j in rng.choice(len(group), NUM_CHOICES - 1,
                                                        replace=False)]
    order = rng.permutation(NUM_CHOICES)
    contexts = [''.join(x + '\n' for x in lines[places[j][0]][:places[j][1]]) for j in order]
    items.append(MCItem(tuple((c, line) for c in contexts), (line,) * NUM_CHOICES,
                        int(np.flatnonzero(order == 0)[0]), f'{name}:{t + 1}'))
  return items
