"""The multiple-choice harness: acc and acc_norm exactly as lm-eval computes them.

An item is a few (context, continuation) requests, one per choice, and the index of the right
one. Each request is scored as log p(continuation | context) (`likelihood.ContinuationScorer`:
exact for AR, an estimator for a diffusion model), and per item

    acc       argmax of the log-likelihoods is the gold choice
    acc_norm  argmax of log-likelihood / len(choice text in characters) is the gold choice
              (lm-eval's length normalisation; ties go to the first index, as np.argmax)

Both models see the same left context and are scored on the same continuation tokens.
Requests are tokenized as lm-eval's `_encode_pair` does (trailing whitespace of the context
moves to the continuation, the pair is encoded whole and split after the context's tokens),
with BOS in front of the context, as every training document starts. All choices of an item
get the same context budget: the context is cut from the left so that the longest choice
fits in `max_len` tokens.

Besides accuracy, a task reports the mean NLL (summed nats) of the gold choice, the mean NLL
of the other choices and their difference `delta_nll = nll_alt - nll_true` (positive: the
gold choice is more likely), the quantities the first paper follows over training to explain
why accuracy can improve while validation loss rises.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from dlmjax.data.tokenizer import BOS_ID, Tokenizer


@dataclasses.dataclass(frozen=True)
class MCItem:
  """One multiple-choice question.

  Attributes:
    requests: (context, continuation) text per choice; most tasks share one context, and
      WinoGrande varies the context with a fixed continuation.
    choices: the choice texts whose character lengths normalise acc_norm (lm-eval's
      `doc_to_choice`).
    gold: index of the right choice.
    id: where the item comes from (file and line or the dataset's id).
  """

  requests: tuple[tuple[str, str], ...]
  choices: tuple[str, ...]
  gold: int
  id: str = ''


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """(BOS + context ids, continuation ids), split as lm-eval's `_encode_pair`."""
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
  context_ids = tokenizer.encode(context)
  whole_ids = tokenizer.encode(context + continuation)
  return [BOS_ID] + context_ids, whole_ids[len(context_ids):]


@dataclasses.dataclass
class EncodedTask:
  """A task's items tokenized once: flat pairs, and which item and choice each belongs to."""

  pairs: list[tuple[list[int], list[int]]]
  item_starts: np.ndarray  # int64 [items + 1]: item i owns pairs item_starts[i]:item_starts[i + 1]
  gold: np.ndarray  # int64 [items]
  choice_chars: np.ndarray  # float64 [pairs]: len(choice text) for acc_norm

  @property
  def num_items(self) -> int:
    return len(self.gold)


def encode_task(tokenizer: Tokenizer, items: Sequence[MCItem], max_len: int) -> EncodedTask:
  pairs, starts, chars = [], [0], []
  for item in items:
    encoded = [encode_pair(tokenizer, c, x) for c, x in item.requests]
    budget = max(max_len - max(len(x) for _, x in encoded), 1)
    pairs += [(c[-budget:], x) for c, x in encoded]
    starts.append(len(pairs))
    chars += [float(len(choice)) for choice in item.choices]
  return EncodedTask(pairs, np.array(starts, np.int64),
                     np.array([item.gold for item in items], np.int64), np.array(chars))


def item_metrics(logp_C: np.ndarray, choice_chars_C: np.ndarray, gold: int) -> dict[str, float]:
  """acc, acc_norm and the NLLs of one item from its choices' log-likelihoods."""
  nll_C = -logp_C
  alt = np.delete(nll_C, gold)
  return {
      'acc': float(np.argmax(logp_C) == gold),
      'acc_norm': float(np.argmax(logp_C / choice_chars_C) == gold),
      'nll_true': float(nll_C[gold]),
      'nll_alt': float(alt.mean()),
      'delta_nll': float(alt.mean() - nll_C[gold]),
  }


def _stderr(x: np.ndarray) -> float:
  # lm-eval's mean_stderr: the sample standard deviation (ddof 1) over sqrt(n).
  return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def aggregate(per_item: list[dict[str, float]], num_choices: Sequence[int]) -> dict:
  """Means over items, standard errors of acc and acc_norm, item count, chance level, and
  `item_correct`: one '1' or '0' per item in the task's order (its acc), so that two runs
  scored on the same items can be compared item by item (a paired test)."""
  out: dict = {}
  for key in ('acc', 'acc_norm', 'nll_true', 'nll_alt', 'delta_nll'):
    values = np.array([m[key] for m in per_item], np.float64)
    out[key] = float(values.mean())
    if key in ('acc', 'acc_norm', 'delta_nll'):
      out[f'{key}_stderr'] = _stderr(values)
  out['items'] = len(per_item)
  out['chance'] = float(np.mean([1.0 / n for n in num_choices]))
  out['item_correct'] = ''.join('1' if m['acc'] else '0' for m in per_item)
  return out


def evaluate_encoded(score: Callable[[list], np.ndarray], task: EncodedTask) -> dict[str, float]:
  """Scores every pair with `score(pairs) -> float64 [N] log-likelihoods` and aggregates."""
  logp = np.asarray(score(task.pairs), np.float64)
  per_item, sizes = [], []
  for i in range(task.num_items):
    lo, hi = task.item_starts[i], task.item_starts[i + 1]
    per_item.append(item_metrics(logp[lo:hi], task.choice_chars[lo:hi], int(task.gold[i])))
    sizes.append(hi - lo)
  return aggregate(per_item, sizes)


def evaluate_mc(score: Callable[[list], np.ndarray], tokenizer: Tokenizer,
                items: Sequence[MCItem], *, max_len: int) -> dict[str, float]:
  """acc, acc_norm (with standard errors), nll_true, nll_alt, delta_nll, items, chance."""
  return evaluate_encoded(score, encode_task(tokenizer, items, max_len))
