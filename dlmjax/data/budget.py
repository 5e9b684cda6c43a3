"""Which tokens a run may see: the validation split and the unique-token budget U.

    train = train_split(store, unique_tokens=cfg.data.unique_tokens, order_seed=0)
    val = val_split(store)

The training documents are put in one order fixed by `order_seed` (not the run seed), and
the budget is the first U tokens of that order, the last document cut so the count is
exact. A smaller budget is therefore a prefix of a larger one: growing U only adds data, which
is what makes runs along the unique-token axis of a grid comparable.

A weighted mixture (`data.corpus=mix:W*SPEC|...` or a seqio Mixture at its rates,
dlmjax/data/corpus.py) keeps both
properties and adds a third: every prefix of the order holds each source in proportion to its
weight, in tokens, to within one document. Each source's training documents get their own
seeded order, and the sources are interleaved by where each document starts in its source's
order divided by the source's weight (a weighted merge; ties go to the source listed first).
A budget a source cannot fill at its weight is refused with the source named.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dlmjax.data import corpus as corpus_lib
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
  (neither validation nor tokenizer split) in store order, or for a mixture the weighted
  merge of each source's own such order (module docstring; 0 then means all the tokens the
  weights allow). Raises UserError if the budget exceeds the training tokens available.
  """
  train_ids = np.flatnonzero(~store.is_val & ~store.is_tokenizer).astype(np.int64)
  if not len(train_ids):
    raise UserError(f'corpus {store.corpus!r} has no training documents: data.val_fraction '
                    f'holds out all {store.num_docs} of them')
  weights = corpus_lib.mixture_weights(store.source_spec)
  if weights is None:
    order = np.random.default_rng(order_seed).permutation(train_ids)
    available = int(store.doc_lengths[train_ids].sum())
  else:
    order, available, short = _mixture_order(store, train_ids, weights, order_seed)
    if unique_tokens > available:
      raise UserError(f'data.unique_tokens={unique_tokens}: the mixture '
                      f'{store.source_spec!r} holds {available} training tokens at its weights; '
                      f'{short} runs out first')
  lengths_all = store.doc_lengths[order]
  cum = np.cumsum(lengths_all)
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


def _mixture_order(store: Store, train_ids: np.ndarray, weights: dict[str, float],
                   order_seed: int) -> tuple[np.ndarray, int, str]:
  """The weighted merge of the sources' seeded orders (module docstring), the tokens of its
  longest prefix in which every source keeps its weight, and a description of the source
  that runs out first."""
  labels = list(weights)
  label_of = np.array([labels.index(store.doc_names[i].split('/', 1)[0]) for i in train_ids])
  keys, ids, tags, ends = [], [], [], []
  for s, label in enumerate(labels):
    own = train_ids[label_of == s]
    if not len(own):
      raise UserError(f'the mixture {store.source_spec!r}: source {s + 1} has no training '
                      f'documents')
    # Seeded by the label, not the position: listing the sources in another order keeps
    # each one's own order.
    own = np.random.default_rng([order_seed, int(label[1:], 16)]).permutation(own)
    cum = np.cumsum(store.doc_lengths[own])
    keys.append(np.concatenate([[0], cum[:-1]]) / weights[label])
    ids.append(own)
    tags.append(np.full(len(own), s))
    ends.append(cum[-1] / weights[label])
  keys, ids, tags = np.concatenate(keys), np.concatenate(ids), np.concatenate(tags)
  merged = np.lexsort((tags, keys))
  first = int(np.argmin(ends))
  # At normalised position T every source has given T times its weight in tokens, T in all
  # (the weights sum to 1); past the first source's end, ends[first], the others would run
  # on alone. A prefix of `available` tokens ends at or before that position.
  available = int(ends[first])
  spec = corpus_lib.mixture_sources(store.source_spec)[first][1]
  short = (f'source {first + 1} ({spec!r}, {int(ends[first] * weights[labels[first]])} '
           f'training tokens at weight {weights[labels[first]]:.3g})')
  return ids[merged], available, short
