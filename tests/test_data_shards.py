"""The sharded token store (dlmjax/data/shards.py) and its Beam pipeline (prepare.py).

Without Apache Beam (`make test`) the shards are written from a flat store with the format's
own writer (`shards.write_shard`, `shards.write_index`), and everything a run reads is checked
against the flat store: document arrays, random token access, nested budgets across shard
boundaries, training and validation batches, hosts, resumption, a training run. With Beam
(`make test-extras`) the pipeline itself is run on the DirectRunner and must produce the
same store, reuse it when nothing changed, rebuild atomically and report bad input files.
"""

import functools
import importlib.util
import os
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dlmjax import config as config_lib
from dlmjax import train
from dlmjax.config import DataConfig
from dlmjax.data import budget, pipeline, prepare, shards
from dlmjax.data import store as store_lib
from dlmjax.data.__main__ import info
from dlmjax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write_corpus(directory, num_docs=40, seed=0):
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(num_docs):
    words = rng.choice(['alpha', 'beta', 'gamma', 'δέλτα', 'x = 1\n'],
                       size=rng.integers(3, 60))
    (directory / f'doc{i:03d}.txt').write_text(' '.join(words))


def _cfg(tmp_path, **kw):
  return DataConfig(corpus=f'files:{tmp_path}/corpus/*.txt', cache_dir=str(tmp_path / 'cache'),
                    val_fraction=0.2, **kw)


def shard_flat_store(flat, tok, directory, num_shards):
  """A sharded store of `flat`'s documents, shard s holding a contiguous run (the last empty)."""
  (directory / 'shards').mkdir(parents=True)
  bounds = np.linspace(0, flat.num_docs, num_shards, dtype=int)  # shard num_shards-1: empty
  records = []
  for s in range(num_shards - 1):
    ids = range(bounds[s], bounds[s + 1])
    docs = [np.array(flat.doc(i)) for i in ids]
    shards.write_shard(directory / 'shards' / shards.shard_name(s, num_shards), docs)
    records.append(shards.shard_record(s, num_shards, [flat.doc_names[i] for i in ids],
                                       [len(d) for d in docs], [flat.doc_bytes[i] for i in ids],
                                       ''))
  shards.write_index(directory, records, num_shards, tok, source=flat.corpus,
                     val_fraction=flat.meta['val_fraction'],
                     tokenizer_fraction=flat.meta['tokenizer_fraction'])
  return shards.ShardedStore(directory)


@pytest.fixture
def both(tmp_path):
  _write_corpus(tmp_path / 'corpus')
  tok, flat = store_lib.prepare_data(_cfg(tmp_path))
  return tok, flat, shard_flat_store(flat, tok, tmp_path / 'shards', num_shards=4)


def test_a_sharded_store_holds_the_flat_stores_documents_and_splits(both):
  tok, flat, sharded = both
  assert sharded.num_docs == flat.num_docs and sharded.num_tokens == flat.num_tokens
  for name in ('doc_starts', 'doc_bytes', 'is_val', 'is_tokenizer', 'token_bytes'):
    np.testing.assert_array_equal(getattr(sharded, name), getattr(flat, name), err_msg=name)
  assert sharded.doc_names == flat.doc_names
  for i in range(flat.num_docs):
    assert sharded.doc(i).tolist() == flat.doc(i).tolist()
    assert tok.decode(sharded.doc(i)[1:-1]) == tok.decode(flat.doc(i)[1:-1])


def test_token_access_by_offset_equals_the_flat_memmap(both):
  _, flat, sharded = both
  rng = np.random.default_rng(0)
  idx = rng.integers(0, flat.num_tokens, size=(7, 33))
  np.testing.assert_array_equal(sharded.tokens[idx], flat.tokens[idx])
  assert sharded.tokens[idx].dtype == flat.tokens.dtype
  np.testing.assert_array_equal(sharded.tokens[5:300:3], flat.tokens[5:300:3])
  with pytest.raises(IndexError):
    sharded.tokens[np.array([flat.num_tokens])]


@pytest.mark.parametrize('unique_tokens', [50, 900, 0])
def test_budgets_and_batches_equal_the_flat_stores_across_shard_boundaries(both,
                                                                           unique_tokens):
  _, flat, sharded = both
  a, b = (budget.train_split(s, unique_tokens, order_seed=3) for s in (flat, sharded))
  np.testing.assert_array_equal(a.doc_ids, b.doc_ids)
  assert (a.num_tokens, a.num_bytes) == (b.num_tokens, b.num_bytes)
  kw = dict(seq_len=16, global_batch=4, epochs=3.5, seed=1)
  da, db = pipeline.TrainData(a, **kw), pipeline.TrainData(b, **kw)
  for step in range(da.num_steps):
    x, y = da.batch(step), db.batch(step)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=f'step {step} {k}')
  va, vb = (pipeline.val_batches(budget.val_split(s), seq_len=16, batch_size=4, max_tokens=400)
            for s in (flat, sharded))
  assert len(va) == len(vb) and all((x[k] == y[k]).all() for x, y in zip(va, vb) for k in x)


def test_nested_budgets_hosts_and_resume_on_a_sharded_store(both):
  _, _, sharded = both
  small = budget.train_split(sharded, 300, order_seed=0)
  large = budget.train_split(sharded, 900, order_seed=0)
  np.testing.assert_array_equal(large.doc_ids[:small.num_docs], small.doc_ids)
  one = pipeline.TrainData(large, seq_len=16, global_batch=4, epochs=2, seed=0, prefetch=0)
  hosts = [pipeline.TrainData(large, seq_len=16, global_batch=4, epochs=2, seed=0,
                              process_index=p, process_count=2, prefetch=0) for p in range(2)]
  for step in range(one.num_steps):
    joined = np.concatenate([h.batch(step)['tokens'] for h in hosts])
    np.testing.assert_array_equal(joined, one.batch(step)['tokens'])
  it = one.iterator()
  for _ in range(3):
    next(it)
  state = it.get_state()
  rest = [next(it)['tokens'] for _ in range(one.num_steps - 3)]
  resumed = one.iterator()
  resumed.set_state(state)
  for tokens in rest:
    np.testing.assert_array_equal(next(resumed)['tokens'], tokens)
  # Worker processes (data.prefetch_workers) open the shards themselves and give the same
  # batches from the same state.
  workers = pipeline.TrainData(large, seq_len=16, global_batch=4, epochs=2, seed=0,
                               prefetch_workers=2)
  it = workers.iterator()
  it.set_state(state)
  for tokens in rest:
    np.testing.assert_array_equal(next(it)['tokens'], tokens)


def test_data_corpus_store_opens_it_and_names_a_mismatched_key(both, tmp_path):
  _, flat, sharded = both
  cfg = DataConfig(corpus=f'store:{sharded.path}', val_fraction=0.2)
  tok, opened = store_lib.prepare_data(cfg)
  assert isinstance(opened, shards.ShardedStore) and opened.num_tokens == flat.num_tokens
  assert tok.kind == 'byte'
  with pytest.raises(UserError, match=r'data.val_fraction=0.02.*holds out 0.2'):
    store_lib.prepare_data(DataConfig(corpus=f'store:{sharded.path}'))
  with pytest.raises(UserError, match=r'data.tokenizer=.bpe.*tokenized with .byte'):
    store_lib.prepare_data(DataConfig(corpus=f'store:{sharded.path}', val_fraction=0.2,
                                      tokenizer='bpe'))
  with pytest.raises(UserError, match=r'not a sharded token store.*dlmjax.data tokenize'):
    store_lib.prepare_data(DataConfig(corpus=f'store:{tmp_path / "nothing"}'))


def test_info_reports_sizes_splits_budget_and_a_length_histogram(both):
  _, flat, sharded = both
  text = info(str(sharded.path))
  train_tokens = int(flat.doc_lengths[~flat.is_val & ~flat.is_tokenizer].sum())
  assert f'{flat.num_docs} documents, {flat.num_tokens} tokens, 4 shards (3 non-empty)' in text
  assert f'data.unique_tokens={train_tokens}' in text
  assert f'validation: {int(flat.is_val.sum())} documents' in text
  rows = [line for line in text.splitlines() if line.strip().startswith('[')]
  assert sum(int(r.split(')')[1].split()[0]) for r in rows) == flat.num_docs


def test_a_run_trains_from_a_sharded_store_exactly_as_from_the_corpus(tmp_path):
  micro = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
           'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=8000', 'data.epochs=1',
           'eval.val_tokens=512', 'eval.num_evals=1', 'eval.batch_size=8', 'objective=ar',
           'train.progress=false', 'eval.tasks=', f'data.cache_dir={tmp_path / "cache"}']
  flat_cfg = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                                    [*micro, f'run_dir={tmp_path / "flat"}'])
  tok, flat = store_lib.prepare_data(flat_cfg.data)
  sharded = shard_flat_store(flat, tok, tmp_path / 'shards', num_shards=3)
  shard_cfg = config_lib.load_config(
      [str(ROOT / 'configs/tiny.yaml')],
      [*micro, f'run_dir={tmp_path / "sharded"}', f'data.corpus=store:{sharded.path}'])
  a, b = train.run(flat_cfg), train.run(shard_cfg)
  assert a['val_loss'] == b['val_loss'] and a['val_bits_per_byte'] == b['val_bits_per_byte']
  assert a['unique_tokens'] == b['unique_tokens'] == 8000


# --- the Beam pipeline ([beam] extra: make test-extras) ---

needs_beam = pytest.mark.skipif(importlib.util.find_spec('apache_beam') is None,
                                reason='needs the [beam] extra (make test-extras)')


@needs_beam
def test_the_beam_pipeline_writes_the_flat_stores_documents_and_reuses_them(tmp_path, capsys):
  _write_corpus(tmp_path / 'corpus', num_docs=60)
  tok, flat = store_lib.prepare_data(_cfg(tmp_path))
  out = tmp_path / 'shards'
  made = prepare.tokenize(_cfg(tmp_path).corpus, out, val_fraction=0.2, num_shards=9,
                          workers=2)
  assert made.doc_names == flat.doc_names
  np.testing.assert_array_equal(made.doc_starts, flat.doc_starts)
  np.testing.assert_array_equal(made.tokens[:], flat.tokens[:])
  np.testing.assert_array_equal(made.is_val, flat.is_val)
  # 60 documents cut into runs of ceil(60 / 9) = 7: eight shards of 7 and one of 4.
  assert [s['docs'] for s in made.index['shards']] == [7] * 8 + [4]
  assert not list(tmp_path.glob('.shards.tmp-*'))
  stamp = (out / shards.INDEX_FILE).stat().st_mtime_ns
  prepare.tokenize(_cfg(tmp_path).corpus, out, val_fraction=0.2, num_shards=9,
                   workers=2)
  assert (out / shards.INDEX_FILE).stat().st_mtime_ns == stamp
  assert 'up to date' in capsys.readouterr().err
  (tmp_path / 'corpus' / 'doc999.txt').write_text('a new document')
  with pytest.raises(UserError, match='holds a store of other data'):
    prepare.tokenize(_cfg(tmp_path).corpus, out, val_fraction=0.2, num_shards=9,
                     workers=2)


@needs_beam
def test_an_interrupted_build_leaves_no_store_and_the_next_run_resumes(tmp_path, monkeypatch):
  _write_corpus(tmp_path / 'corpus', num_docs=10)
  out = tmp_path / 'shards'

  def killed(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(shards, 'write_index', killed)
  with pytest.raises(KeyboardInterrupt):
    prepare.tokenize(_cfg(tmp_path).corpus, out, val_fraction=0.2, num_shards=2, workers=1)
  assert not out.exists() and len(list(tmp_path.glob('.shards.tmp-*'))) == 1
  written = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob('.shards.tmp-*/shards/*')}
  assert len(written) == 2
  monkeypatch.undo()
  # The shards whose records were written are kept, not tokenized again.
  made = prepare.tokenize(_cfg(tmp_path).corpus, out, val_fraction=0.2, num_shards=2,
                          workers=1)
  assert {p.name: p.stat().st_mtime_ns for p in (out / 'shards').iterdir()} == written
  assert made.num_docs == 10 and not list(tmp_path.glob('.shards.tmp-*'))


@needs_beam
def test_bad_input_files_are_named_and_the_policy_applied(tmp_path):
  _write_corpus(tmp_path / 'corpus', num_docs=5)
  (tmp_path / 'corpus' / 'binary.txt').write_bytes(b'ab\0cd')
  (tmp_path / 'corpus' / 'latin1.txt').write_bytes('café'.encode('latin-1'))
  (tmp_path / 'corpus' / 'empty.txt').write_text('  \n')
  proc = subprocess.run(
      [sys.executable, '-m', 'dlmjax.data', 'tokenize', _cfg(tmp_path).corpus,
       '--out', str(tmp_path / 'shards'), '--val-fraction', '0.2', '--workers', '1'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert 'binary (a NUL byte), skipped: binary.txt' in proc.stderr
  assert 'not UTF-8, undecodable bytes replaced: latin1.txt' in proc.stderr
  assert 'empty, skipped: empty.txt' in proc.stderr
  assert 'INFO' not in proc.stderr  # Beam's own logging goes to its log file
  made = shards.ShardedStore(tmp_path / 'shards')
  assert 'latin1.txt' in made.doc_names and 'binary.txt' not in made.doc_names
  assert '6 documents' in proc.stdout
  bad = subprocess.run([sys.executable, '-m', 'dlmjax.data', 'tokenize', 'files:/nowhere/*.txt',
                        '--out', str(tmp_path / 'x')], cwd=ROOT, capture_output=True, text=True)
  assert bad.returncode == 2 and bad.stderr.startswith('error: data.corpus=') and \
      'Traceback' not in bad.stderr


@needs_beam
def test_a_trained_bpe_learns_from_the_tokenizer_split_and_the_store_holds_it_out(tmp_path):
  _write_corpus(tmp_path / 'corpus', num_docs=80)
  source = _cfg(tmp_path).corpus
  tok = prepare.train_tokenizer(source, tmp_path / 'tok', vocab_size=300, val_fraction=0.2,
                                tokenizer_fraction=0.1)
  meta = json.loads((tmp_path / 'tok' / prepare.TOKENIZER_META).read_text())
  names = [f'doc{i:03d}.txt' for i in range(80)]
  split = [n for n in names if store_lib.is_tokenizer_name(n, 0.2, 0.1)]
  assert meta['docs'] == len(split) > 0 and 260 < tok.vocab_size <= 300
  made = prepare.tokenize(source, tmp_path / 'shards', tokenizer_dir=str(tmp_path / 'tok'),
                          val_fraction=0.2, workers=1)
  assert made.index['tokenizer'] == 'bpe' and made.index['tokenizer_fraction'] == 0.1
  assert [made.doc_names[i] for i in np.flatnonzero(made.is_tokenizer)] == split
  train_split = budget.train_split(made, 0, order_seed=0)
  assert not set(train_split.doc_ids) & set(np.flatnonzero(made.is_tokenizer | made.is_val))
  sampled = prepare.train_tokenizer(source, tmp_path / 'tok2', vocab_size=300, val_fraction=0.2,
                                    tokenizer_fraction=0.5, sample_docs=3, seed=1)
  assert json.loads((tmp_path / 'tok2' / prepare.TOKENIZER_META).read_text())['docs'] == 3
  assert 260 < sampled.vocab_size <= 300
  tok_cfg = DataConfig(corpus=f'store:{made.path}', val_fraction=0.2, tokenizer='bpe',
                       bpe_vocab_size=300)
  opened_tok, _ = store_lib.prepare_data(tok_cfg)
  assert opened_tok.fingerprint() == tok.fingerprint()
  # A grid's dry run sizes the model (parameters, FLOPs) with the store's own vocabulary.
  from dlmjax.data.tokenizer import planned_vocab_size
  assert planned_vocab_size(tok_cfg) == made.vocab_size == tok.vocab_size
  with pytest.raises(UserError, match='--val-fraction 0.02.*held out 0.2'):
    prepare.tokenize(source, tmp_path / 'x', tokenizer_dir=str(tmp_path / 'tok'))


def test_the_grid_dry_run_says_where_each_corpus_comes_from(both, tmp_path):
  from experiments.grid import data_sources

  _, flat, sharded = both

  def cfg(corpus, unique_tokens):
    c = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                               [f'data.corpus={corpus}', f'data.unique_tokens={unique_tokens}'])
    return c
  available = int(flat.doc_lengths[~flat.is_val & ~flat.is_tokenizer].sum())
  fits, too_big = cfg(f'store:{sharded.path}', 100), cfg(f'store:{sharded.path}', available + 1)
  assert data_sources([fits])[0].endswith(f'{available:,} training tokens: every budget fits')
  assert f'too small for the largest budget ({available + 1:,}' in data_sources([fits, too_big])[0]
  missing = data_sources([cfg(f'store:{tmp_path / "none"}', 0)])[0]
  assert 'no sharded store there yet' in missing and 'dlmjax.data tokenize' in missing
  assert 'flat store on first use' in data_sources([cfg('stdlib', 16000)])[0]


needs_pyarrow = pytest.mark.skipif(importlib.util.find_spec('pyarrow') is None,
                                   reason='needs pyarrow (the [beam] extra: make test-extras)')


def _write_parquet(directory):
  import pyarrow as pa
  import pyarrow.parquet as pq

  directory.mkdir(parents=True)
  texts = [f'row {i}: ' + 'x = 1\n' * (i % 5) for i in range(10)]
  texts[2], texts[7] = None, '  '
  pq.write_table(pa.table({'text': texts[:7], 'n': list(range(7))}), directory / 'a.parquet',
                 row_group_size=3)
  pq.write_table(pa.table({'text': texts[7:], 'n': list(range(3))}), directory / 'b.parquet',
                 row_group_size=2)
  return texts


@needs_pyarrow
def test_a_parquet_corpus_yields_each_string_row_and_cuts_by_row_group(tmp_path, capsys):
  from dlmjax.data.corpus import open_corpus

  texts = _write_parquet(tmp_path / 'pq')
  corpus = open_corpus(f'parquet:{tmp_path}/pq/*.parquet:text')
  docs = list(corpus.documents())
  expected = [(f'a.parquet:{i}', t) for i, t in enumerate(texts[:7])] + \
      [(f'b.parquet:{i}', t) for i, t in enumerate(texts[7:])]
  assert [(d.name, d.text) for d in docs] == [(n, t) for n, t in expected
                                              if t is not None and t.strip()]
  assert '2 row(s) with a null or empty' in capsys.readouterr().err
  # Row groups: a.parquet has 3 (3 + 3 + 1 rows), b.parquet 2 (2 + 1); pieces are runs of them.
  for parts, count in ((5, 5), (2, 2), (1, 1)):
    pieces = corpus.split(parts)
    assert len(pieces) == count and [d for p in pieces for d in p.documents()] == docs
  assert corpus.size_hint() == 10
  with pytest.raises(UserError, match=r"has no column 'body' \(columns: text, n\)"):
    list(open_corpus(f'parquet:{tmp_path}/pq/*.parquet:body').documents())
  with pytest.raises(UserError, match=r"column 'n' of 'a.parquet' is int64, not a string"):
    list(open_corpus(f'parquet:{tmp_path}/pq/*.parquet:n').documents())
  with pytest.raises(UserError, match='matches no files'):
    open_corpus(f'parquet:{tmp_path}/none/*.parquet:text')


@needs_beam
def test_the_pipeline_tokenizes_parquet_like_the_flat_store(tmp_path):
  _write_parquet(tmp_path / 'pq')
  spec = f'parquet:{tmp_path}/pq/*.parquet:text'
  _, flat = store_lib.prepare_data(DataConfig(corpus=spec, cache_dir=str(tmp_path / 'cache'),
                                              val_fraction=0.3))
  made = prepare.tokenize(spec, tmp_path / 'shards', val_fraction=0.3, num_shards=5, workers=2)
  assert len(made.index['shards']) == 5 and made.doc_names == flat.doc_names
  np.testing.assert_array_equal(made.tokens[:], flat.tokens[:])
  np.testing.assert_array_equal(made.is_val, flat.is_val)


@needs_beam
def test_the_bench_data_section_measures_both_stores_and_the_loader(tmp_path):
  from dlmjax import bench

  _write_corpus(tmp_path / 'corpus', num_docs=30)
  res = bench.bench_tokenize(_cfg(tmp_path).corpus, 'byte', workers=2)
  for key in ('store_mb_per_s', 'beam_mb_per_s_w1', 'beam_mb_per_s_w2', 'beam_scaling',
              'loader_tokens_per_s', 'loader_workers_tokens_per_s'):
    assert res[key] > 0, key
  assert len(res['loader_rss_mb_by_epoch']) == 3
  text = bench.to_markdown({**bench.machine(), 'data': res})
  assert '## Data preparation' in text and '`data.beam_scaling`' in text


@functools.cache
def _fake_remote_file_system():
  """A Beam file system for `fakegs://PATH`, kept under the directory $FAKEGS_ROOT: the remote
  code path of the pipeline (objects created whole, listed by pattern, no directories to
  make) without a network. Beam finds file systems by subclass, so it is defined once."""
  from apache_beam.io.filesystem import FileMetadata, MatchResult
  from apache_beam.io.localfilesystem import LocalFileSystem

  def local(path):
    return os.path.join(os.environ['FAKEGS_ROOT'], path.removeprefix('fakegs://'))

  class FakeRemoteFileSystem(LocalFileSystem):

    @classmethod
    def scheme(cls):
      return 'fakegs'

    def join(self, base, *paths):
      return '/'.join([base.rstrip('/'), *paths])

    def create(self, path, *args, **kwargs):
      os.makedirs(os.path.dirname(local(path)), exist_ok=True)
      return super().create(local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
      return super().open(local(path), *args, **kwargs)

    def exists(self, path):
      return super().exists(local(path))

    def delete(self, paths):
      for p in map(local, paths):
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        # An object store has no empty directories: a prefix exists while it holds objects.
        parent = os.path.dirname(p)
        while parent != os.environ['FAKEGS_ROOT'] and not os.listdir(parent):
          os.rmdir(parent)
          parent = os.path.dirname(parent)

    def match(self, patterns, limits=None):
      root = os.environ['FAKEGS_ROOT']
      return [MatchResult(p, [FileMetadata('fakegs://' + os.path.relpath(m.path, root),
                                           m.size_in_bytes, m.last_updated_in_seconds)
                              for m in r.metadata_list])
              for p, r in zip(patterns, super().match([local(p) for p in patterns], limits))]

  return FakeRemoteFileSystem


@needs_beam
def test_the_pipeline_writes_to_a_remote_file_system_and_resumes_there(tmp_path, monkeypatch):
  _fake_remote_file_system()
  monkeypatch.setenv('FAKEGS_ROOT', str(tmp_path / 'bucket'))
  _write_corpus(tmp_path / 'corpus', num_docs=30)
  spec = _cfg(tmp_path).corpus
  _, flat = store_lib.prepare_data(_cfg(tmp_path))
  in_process = ['--runner=DirectRunner']  # the fake file system lives in this process
  mounted = tmp_path / 'bucket' / 'shards'

  # Interrupted after the shards, before the index: a marker and the records remain.
  def killed(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(prepare, '_finish_remote', killed)
  with pytest.raises(KeyboardInterrupt):
    prepare.tokenize(spec, 'fakegs://shards', val_fraction=0.2, num_shards=3,
                     beam_args=in_process)
  assert not (mounted / shards.INDEX_FILE).exists()
  assert [p.name for p in mounted.glob('.build-*')] and len(list(mounted.glob('shards/*'))) == 3
  written = {p: p.stat().st_mtime_ns for p in mounted.glob('shards/*')}
  monkeypatch.undo()
  monkeypatch.setenv('FAKEGS_ROOT', str(tmp_path / 'bucket'))
  # The next run keeps every shard whose record was written and writes the index last.
  index = prepare.tokenize(spec, 'fakegs://shards', val_fraction=0.2, num_shards=3,
                           beam_args=in_process)
  assert {p: p.stat().st_mtime_ns for p in mounted.glob('shards/*')} == written
  assert sorted(p.name for p in mounted.iterdir()) == [
      'doc_names.json', 'docs.npz', 'index.json', 'shards', 'token_bytes.npy', 'tokenizer.json']
  made = shards.ShardedStore(mounted)  # read where the bucket is mounted
  assert index['num_docs'] == made.num_docs == flat.num_docs
  assert made.doc_names == flat.doc_names
  np.testing.assert_array_equal(made.tokens[:], flat.tokens[:])
  assert prepare.tokenize(spec, 'fakegs://shards', val_fraction=0.2, num_shards=3,
                          beam_args=in_process)['build_key'] == index['build_key']
  # A remote path with other files is refused, and training from a remote path says to mount.
  (tmp_path / 'bucket' / 'other').mkdir()
  (tmp_path / 'bucket' / 'other' / 'notes.txt').write_text('x')
  with pytest.raises(UserError, match='holds files and no store of this build'):
    prepare.tokenize(spec, 'fakegs://other', val_fraction=0.2, beam_args=in_process)
  with pytest.raises(UserError, match='mount the bucket'):
    store_lib.prepare_data(DataConfig(corpus='store:gs://b/shards', val_fraction=0.2))
