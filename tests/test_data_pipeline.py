"""Epochs, packing and grain batches, checked against a plain-Python reference stream."""

import json
import math

import numpy as np
import pytest

from dlmjax.data import pipeline
from dlmjax.data.budget import train_split, val_split
from dlmjax.data.tokenizer import BOS_ID, PAD_ID
from dlmjax.errors import UserError
from fakes import word_corpus_store


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  return word_corpus_store(tmp_path_factory.mktemp('pipeline'), words=['ab', 'cde', 'f', 'ghij'],
                           num_docs=60, min_words=1, max_words=25, seed=2)


def reference_rows(split, seed, total_tokens, seq_len):
  """The stream built the slow obvious way: tokens, segment ids, positions [rows, L]."""
  tokens, pieces = [], []  # pieces: which (epoch, document) each token comes from
  epoch = 0
  while len(tokens) < total_tokens:
    for j in np.random.default_rng([seed, epoch]).permutation(split.num_docs):
      doc = split.store.doc(split.doc_ids[j])[:split.lengths[j]]
      tokens += doc.tolist()
      pieces += [(epoch, j)] * len(doc)
    epoch += 1
  tokens, pieces = tokens[:total_tokens], pieces[:total_tokens]
  rows = math.ceil(total_tokens / seq_len)
  out = {k: np.zeros(rows * seq_len, np.int32) for k in ('tokens', 'segment_ids', 'positions')}
  for i, (tok, piece) in enumerate(zip(tokens, pieces)):
    new = i % seq_len == 0 or pieces[i - 1] != piece
    seg = 1 if i % seq_len == 0 else out['segment_ids'][i - 1] + new
    out['tokens'][i] = tok
    out['segment_ids'][i] = seg
    out['positions'][i] = 0 if new else out['positions'][i - 1] + 1
  return {k: v.reshape(rows, seq_len) for k, v in out.items()}


def _all_rows(data):
  batches = [data.batch(s) for s in range(data.num_steps)]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


@pytest.mark.parametrize('unique, epochs, batch, seq_len', [
    (0, 3.5, 4, 16),  # whole training split, rows span document and epoch boundaries
    (300, 2.0, 3, 32),
    (20, 10.3, 2, 64),  # U < L: one row spans more than two epochs
])
def test_batches_equal_the_reference_stream(store, unique, epochs, batch, seq_len):
  split = train_split(store, unique, order_seed=0)
  data = pipeline.TrainData(split, seq_len=seq_len, global_batch=batch, epochs=epochs, seed=7)
  total = round(split.num_tokens * epochs)
  assert data.total_tokens == total
  assert data.num_steps == math.ceil(total / (batch * seq_len))
  got = _all_rows(data)
  want = reference_rows(split, 7, total, seq_len)
  rows = len(want['tokens'])
  for k in got:
    assert got[k].dtype == np.int32 and got[k].shape == (data.num_steps * batch, seq_len)
    np.testing.assert_array_equal(got[k][:rows], want[k], err_msg=k)
    assert (got[k][rows:] == 0).all()  # whole padding rows of the last batch


def test_training_sees_exactly_round_u_times_e_tokens_and_each_epoch_is_the_budget(store):
  split = train_split(store, 777, order_seed=0)
  data = pipeline.TrainData(split, seq_len=16, global_batch=5, epochs=4.4, seed=1)
  rows = _all_rows(data)
  real = rows['segment_ids'] > 0
  assert real.sum() == round(777 * 4.4) == data.total_tokens
  assert (rows['tokens'][~real] == PAD_ID).all() and (rows['positions'][~real] == 0).all()
  stream = rows['tokens'][real]  # row-major order is stream order
  budget = np.sort(np.concatenate([store.doc(d)[:n] for d, n in zip(split.doc_ids,
                                                                      split.lengths)]))
  for e in range(4):
    assert (np.sort(stream[e * 777:(e + 1) * 777]) == budget).all()
  assert set(stream[4 * 777:].tolist()) <= set(budget.tolist())


def test_each_epoch_visits_the_documents_in_a_different_permutation(store):
  n = train_split(store, 0, order_seed=0).num_docs
  orders = [pipeline.epoch_order(n, seed=0, epoch=e) for e in range(5)]
  for e, order in enumerate(orders):
    assert sorted(order) == list(range(n))
    assert all((order != other).any() for other in orders[e + 1:])
  assert (pipeline.epoch_order(n, seed=1, epoch=0) != orders[0]).any()
  assert (pipeline.epoch_order(n, seed=0, epoch=3) == orders[3]).all()


def test_segments_restart_positions_at_document_and_row_starts(store):
  split = train_split(store, 0, order_seed=0)
  rows = _all_rows(pipeline.TrainData(split, seq_len=48, global_batch=2, epochs=2, seed=0))
  used = rows['segment_ids'][:, 0] > 0  # the last batch may end in whole padding rows
  seg, pos, tok = (rows[k][used] for k in ('segment_ids', 'positions', 'tokens'))
  assert (seg[:, 0] == 1).all() and (pos[:, 0] == 0).all()
  starts = np.zeros_like(seg, bool)
  starts[:, 0] = True
  starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
  real = seg > 0
  assert (pos[starts & real] == 0).all()
  assert (pos[~starts & real] == pos[:, :-1][~starts[:, 1:] & real[:, 1:]] + 1).all()
  # Every BOS opens a segment; a segment not opened by BOS continues the previous row's
  # document, whose last row ends mid-document.
  assert (starts[tok == BOS_ID]).all()
  continued = starts & real & (tok != BOS_ID)
  assert not continued[:, 1:].any() and continued[1:, 0].any()


def test_processes_read_disjoint_halves_of_the_same_global_batch(store):
  split = train_split(store, 0, order_seed=0)
  kw = dict(seq_len=32, global_batch=6, epochs=1.5, seed=3)
  whole = pipeline.TrainData(split, **kw)
  parts = [pipeline.TrainData(split, process_index=p, process_count=2, **kw) for p in (0, 1)]
  assert parts[0].num_steps == whole.num_steps and parts[0].rows_per_process == 3
  for step in (0, 1, whole.num_steps - 1):
    glued = [np.concatenate([p.batch(step)[k] for p in parts]) for k in ('tokens', 'positions')]
    assert (glued[0] == whole.batch(step)['tokens']).all()
    assert (glued[1] == whole.batch(step)['positions']).all()
  with pytest.raises(UserError, match='train.batch_size=6 is not divisible by the 4 processes'):
    pipeline.TrainData(split, process_count=4, **kw)


def test_grain_iterator_resumes_from_saved_state_exactly(store):
  split = train_split(store, 0, order_seed=0)
  data = pipeline.TrainData(split, seq_len=16, global_batch=4, epochs=3, seed=5, prefetch=2)
  uninterrupted = list(data.iterator())
  assert len(uninterrupted) == data.num_steps
  it = data.iterator()
  for _ in range(7):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
  resumed = data.iterator()
  resumed.set_state(state)
  for want in uninterrupted[7:12]:
    got = next(resumed)
    assert all((got[k] == want[k]).all() for k in want)


def test_worker_processes_give_the_threads_batches_and_resume_from_either_state(store):
  split = train_split(store, 0, order_seed=0)
  kwargs = dict(seq_len=16, global_batch=4, epochs=3, seed=5, prefetch=2)
  threaded = pipeline.TrainData(split, **kwargs)
  workers = pipeline.TrainData(split, prefetch_workers=2, **kwargs)
  want = list(threaded.iterator())
  it = workers.iterator()
  got = [next(it) for _ in range(9)]
  for g, w in zip(got, want):
    assert all((g[k] == w[k]).all() for k in w)
  # The state is the threaded iterator's: a checkpoint of one resumes the other.
  state = json.loads(json.dumps(it.get_state()))
  assert state == {'next_index': 9}
  resumed = threaded.iterator()
  resumed.set_state(state)
  batch = next(resumed)
  assert all((batch[k] == want[9][k]).all() for k in want[9])
  other = workers.iterator()
  other.set_state({'next_index': len(want) - 2})
  rest = list(other)
  assert len(rest) == 2 and all((rest[1][k] == want[-1][k]).all() for k in want[-1])


def test_given_steps_continue_the_stream_into_further_epochs_without_padding(store):
  split = train_split(store, 100, order_seed=0)
  data = pipeline.TrainData(split, seq_len=8, global_batch=2, epochs=1.0, seed=0, steps=40)
  assert data.num_steps == 40 and data.total_tokens == 640
  rows = _all_rows(data)
  assert (rows['segment_ids'] > 0).all()
  assert data.epoch_of_step(40) == 6.4 and data.epoch_of_step(5) == 0.8
  want = reference_rows(split, 0, 640, 8)
  assert (rows['tokens'] == want['tokens']).all()


def test_epoch_of_step_counts_tokens_seen_over_the_budget(store):
  split = train_split(store, 1000, order_seed=0)
  data = pipeline.TrainData(split, seq_len=10, global_batch=10, epochs=2.5, seed=0)
  assert data.num_steps == 25
  assert data.epoch_of_step(0) == 0 and data.epoch_of_step(10) == 1.0
  assert data.epoch_of_step(25) == 2.5


def test_val_batches_pack_validation_documents_in_store_order_with_padding_rows(store):
  split = val_split(store)
  batches = pipeline.val_batches(split, seq_len=16, batch_size=4, max_tokens=16 * 10)
  assert len(batches) == 3
  for b in batches:
    assert all(v.shape == (4, 16) and v.dtype == np.int32 for v in b.values())
  assert (batches[-1]['segment_ids'][2:] == 0).all()  # rows 10, 11 pad the last batch
  tokens = np.concatenate([b['tokens'] for b in batches])[:10].ravel()
  stream = np.concatenate([store.doc(d) for d in split.doc_ids])
  assert (tokens == stream[:160]).all()
  again = pipeline.val_batches(split, seq_len=16, batch_size=4, max_tokens=16 * 10)
  assert all((a[k] == b[k]).all() for a, b in zip(batches, again) for k in a)


def test_val_batches_hold_all_validation_tokens_when_the_split_is_small(store):
  split = val_split(store)
  batches = pipeline.val_batches(split, seq_len=16, batch_size=4, max_tokens=10**9)
  seg = np.concatenate([b['segment_ids'] for b in batches])
  assert (seg > 0).sum() == split.num_tokens
  assert len(batches) == math.ceil(math.ceil(split.num_tokens / 16) / 4)
