"""Which tokens a run may see: the validation split and the unique-token budget U.

    train = train_split(store, unique_tokens=cfg.data.unique_tokens, order_seed=0)
    val = val_split(store)

The training documents are put in one order fixed by `order_seed` (not the run seed), and
the budget is the first U tokens of that order, the last document cut so the count is
exact. A smaller budget is therefore a prefix of a larger one: growing U only adds data, which
is what makes runs along the unique-token axis of a grid comparable.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dlmjax.data.store import Store
from dlmjax.errors import UserError


@dataclasses.dataclass
class Split:
  """Documents of a store in visiting order and how many tokens each contributes.

  Attributes:
    store: the store (flat or sharded) they come from.
    doc_ids: int64 [n], store document indices in visiting order.
    lengths: int64 [n], tokens used from the start of each document (all of it except
      possibly for the last one of a training budget).
    num_tokens: sum(lengths).
    num_bytes: UTF-8 bytes those tokens stand for.
  """

  store: Store
  doc_ids: np.ndarray
  lengths: np.ndarray
  num_tokens: int
  num_bytes: int

  @property
  def num_docs(self) -> int:
    return len(self.doc_ids)


def val_split(store: Store) -> Split:
  """The held-out documents, whole, in store order. Raises UserError if there are none."""
  doc_ids = np.flatnonzero(store.is_val).astype(np.int64)
  if len(doc_ids) == 0:
    raise UserError(f'corpus {store.corpus!r} has no validation documents: its '
                    f'{store.num_docs} documents all hash above data.val_fraction; raise it')
  lengths = store.doc_lengths[doc_ids]
  return Split(store, doc_ids, lengths, int(lengths.sum()), int(store.doc_bytes[doc_ids].sum()))


def train_split(store: Store, unique_tokens: int, order_seed: int) -> Split:
  """The first `unique_tokens` tokens (0: all) of the training documents in a fixed order.

  The order is `np.random.default_rng(order_seed).permutation` of the training documents
  (neither validation nor tokenizer split) in store order. Raises UserError if the budget exceeds the training tokens available.
  """
  train_ids = np.flatnonzero(~store.is_val & ~store.is_tokenizer).astype(np.int64)
  order = np.random.default_rng(order_seed).permutation(train_ids)
  lengths_all = store.doc_lengths[order]
  cum = np.cumsum(lengths_all)
  available = int(cum[-1]) if len(cum) else 0
  if available == 0:
    raise UserError(f'corpus {store.corpus!r} has no training documents: data.val_fraction '
                    f'holds out all {store.num_docs} of them')
  if unique_tokens > available:
    raise UserError(f'data.unique_tokens={unique_tokens} exceeds the {available} training '
                    f'tokens corpus {store.corpus!r} holds')
  budget = unique_tokens or available
  n = int(np.searchsorted(cum, budget, side='left')) + 1  # first prefix reaching the budget
  doc_ids = order[:n]
  lengths = lengths_all[:n].copy()
  lengths[-1] -= int(cum[n - 1]) - budget
  num_bytes = int(store.doc_bytes[doc_ids[:-1]].sum())
  last = doc_ids[-1]
  if lengths[-1] == store.doc_lengths[last]:
    num_bytes += int(store.doc_bytes[last])
  else:
    num_bytes += int(store.token_bytes[store.doc(last)[:lengths[-1]]].sum())
  return Split(store, doc_ids, lengths, budget, num_bytes)
