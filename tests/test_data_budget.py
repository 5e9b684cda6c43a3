"""Unique-token budget and validation split: exact, nested, disjoint."""

import numpy as np
import pytest

from dlmjax.data.budget import train_split, val_split
from dlmjax.errors import UserError
from fakes import word_corpus_store


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  return word_corpus_store(tmp_path_factory.mktemp('budget'), words=['one', 'two', 'three', 'fünf'],
                           num_docs=50, min_words=2, max_words=40, seed=1)


def _tokens(split):
  return np.concatenate([split.store.doc(d)[:n] for d, n in zip(split.doc_ids, split.lengths)])


def test_budget_is_exactly_u_tokens_with_the_last_document_cut(store):
  for u in (1, 17, 500, 1234):
    split = train_split(store, u, order_seed=0)
    assert split.num_tokens == u == split.lengths.sum() == len(_tokens(split))
    assert (split.lengths[:-1] == store.doc_lengths[split.doc_ids[:-1]]).all()
    assert 1 <= split.lengths[-1] <= store.doc_lengths[split.doc_ids[-1]]


def test_zero_budget_takes_every_training_document_whole(store):
  split = train_split(store, 0, order_seed=0)
  assert sorted(split.doc_ids) == np.flatnonzero(~store.is_val).tolist()
  assert split.num_tokens == store.doc_lengths[~store.is_val].sum()
  assert split.num_bytes == store.doc_bytes[~store.is_val].sum()


def test_smaller_budget_is_a_prefix_of_a_larger_one(store):
  full = _tokens(train_split(store, 0, order_seed=3))
  for u in (5, 100, 999, len(full)):
    assert (_tokens(train_split(store, u, order_seed=3)) == full[:u]).all()


def test_order_seed_changes_the_document_order(store):
  assert (train_split(store, 0, order_seed=0).doc_ids
          != train_split(store, 0, order_seed=1).doc_ids).any()


def test_validation_documents_are_disjoint_from_training_and_whole(store):
  train, val = train_split(store, 0, order_seed=0), val_split(store)
  assert not set(train.doc_ids) & set(val.doc_ids)
  assert sorted(set(train.doc_ids) | set(val.doc_ids)) == list(range(store.num_docs))
  assert val.doc_ids.tolist() == sorted(val.doc_ids.tolist())
  assert (val.lengths == store.doc_lengths[val.doc_ids]).all()
  assert val.num_bytes == store.doc_bytes[val.doc_ids].sum()


def test_num_bytes_counts_the_text_bytes_of_a_cut_document(store):
  split = train_split(store, 300, order_seed=0)
  tokens = _tokens(split)
  assert split.num_bytes == store.token_bytes[tokens].sum()


def test_budget_past_the_corpus_names_the_tokens_available(store):
  available = train_split(store, 0, order_seed=0).num_tokens
  with pytest.raises(UserError, match=rf'data\.unique_tokens={available + 1} exceeds the '
                                      rf'{available} training tokens corpus'):
    train_split(store, available + 1, order_seed=0)
