"""Token store: layout, validation flags, the content-hash cache, atomic publication."""

import io
import os
import sys

import numpy as np
import pytest

from dlmjax.config import DataConfig
from dlmjax.data import store as store_lib
from dlmjax.data.corpus import open_corpus
from dlmjax.data.tokenizer import BOS_ID, EOS_ID, ByteTokenizer
from dlmjax.errors import UserError


def _write_corpus(directory, num_docs=30, seed=0):
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True, exist_ok=True)
  for i in range(num_docs):
    vocab = ['alpha', 'beta', 'gamma', 'δέλτα', 'x = 1\n']
    words = rng.choice(vocab, size=rng.integers(3, 30))
    (directory / f'doc{i:03d}.txt').write_text(' '.join(words))


def _cfg(tmp_path, **kw):
  return DataConfig(corpus=f'files:{tmp_path}/corpus/*.txt', cache_dir=str(tmp_path / 'cache'),
                    val_fraction=0.2, **kw)


def test_store_holds_each_document_as_bos_text_eos(tmp_path):
  _write_corpus(tmp_path / 'corpus')
  tok, store = store_lib.prepare_data(_cfg(tmp_path))
  assert store.tokens.dtype == np.uint16 and isinstance(store.tokens, np.memmap)
  assert store.num_docs == 30 and store.doc_starts.shape == (31,)
  assert store.doc_starts[-1] == store.num_tokens == len(store.tokens)
  for i, doc in enumerate(open_corpus(_cfg(tmp_path).corpus).documents()):
    assert store.doc_names[i] == doc.name
    assert store.doc(i).tolist() == [BOS_ID] + tok.encode(doc.text) + [EOS_ID]
    assert store.doc_bytes[i] == len(doc.text.encode('utf-8'))
    assert store.is_val[i] == (store_lib.val_hash(doc.name) < 0.2)
  assert 0 < store.is_val.sum() < 30
  assert (store.token_bytes == tok.token_bytes()).all()


def test_val_hash_is_sha1_of_the_name_as_a_fraction():
  h = store_lib.val_hash('json/decoder.py')
  assert 0 <= h < 1 and h == store_lib.val_hash('json/decoder.py')
  fractions = np.array([store_lib.val_hash(f'doc{i}') for i in range(4000)])
  assert abs((fractions < 0.1).mean() - 0.1) < 0.02


def test_second_prepare_data_reuses_the_cached_store_without_rebuilding(tmp_path, monkeypatch):
  _write_corpus(tmp_path / 'corpus')
  _, first = store_lib.prepare_data(_cfg(tmp_path))

  def no_rebuild(*args, **kwargs):
    raise AssertionError('store rebuilt')
  monkeypatch.setattr(store_lib, 'build_store', no_rebuild)
  _, second = store_lib.prepare_data(_cfg(tmp_path))
  assert second.path == first.path
  assert (second.tokens == first.tokens).all()
  # Only the published store is left: no temporary directories.
  assert [p.name for p in (tmp_path / 'cache' / 'stores').iterdir()] == [first.path.name]


def test_changing_corpus_content_or_val_fraction_changes_the_store_key(tmp_path):
  _write_corpus(tmp_path / 'corpus')
  _, first = store_lib.prepare_data(_cfg(tmp_path))
  (tmp_path / 'corpus' / 'doc007.txt').write_text('changed')
  _, changed = store_lib.prepare_data(_cfg(tmp_path))
  assert changed.path != first.path
  assert changed.doc(7).tolist() == [BOS_ID] + ByteTokenizer().encode('changed') + [EOS_ID]
  cfg = _cfg(tmp_path)
  cfg.val_fraction = 0.5
  _, other_split = store_lib.prepare_data(cfg)
  assert other_split.path not in (first.path, changed.path)


def test_cache_dir_falls_back_to_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv('DLMJAX_CACHE', str(tmp_path / 'env-cache'))
  assert store_lib.cache_root(DataConfig()) == tmp_path / 'env-cache'
  assert store_lib.cache_root(DataConfig(cache_dir=str(tmp_path / 'c'))) == tmp_path / 'c'
  monkeypatch.delenv('DLMJAX_CACHE')
  assert store_lib.cache_root(DataConfig()) == store_lib.pathlib.Path(
      os.path.expanduser('~/.cache/dlmjax'))


def test_builder_losing_the_race_keeps_the_winners_store(tmp_path):
  _write_corpus(tmp_path / 'corpus')
  _, winner = store_lib.prepare_data(_cfg(tmp_path))
  loser = tmp_path / 'cache' / 'stores' / '.loser.tmp'
  loser.mkdir()
  (loser / 'meta.json').write_text('{}')
  store_lib._publish(loser, winner.path)
  assert not loser.exists()
  assert store_lib.TokenStore(winner.path).num_tokens == winner.num_tokens


def test_corpus_of_only_empty_documents_is_a_user_error(tmp_path):
  (tmp_path / 'corpus').mkdir()
  (tmp_path / 'corpus' / 'a.txt').write_text('   ')
  with pytest.raises(UserError, match='holds no non-empty documents'):
    store_lib.prepare_data(_cfg(tmp_path))
  assert not [p for p in (tmp_path / 'cache' / 'stores').iterdir()]


def test_progress_bar_is_drawn_only_on_a_terminal(tmp_path, monkeypatch):
  class Terminal(io.StringIO):
    def isatty(self):
      return True
  _write_corpus(tmp_path / 'corpus')
  monkeypatch.setattr(sys, 'stderr', Terminal())
  store_lib.prepare_data(_cfg(tmp_path))
  assert 'tokenizing' in sys.stderr.getvalue()


def test_stdlib_byte_store_builds_in_seconds_and_decodes_to_the_files(tmp_path):
  cfg = DataConfig(corpus='stdlib', cache_dir=str(tmp_path))
  tok, store = store_lib.prepare_data(cfg)
  corpus = open_corpus('stdlib')
  assert store.meta['build_s'] < 10
  assert store.num_docs > 300 and store.num_tokens > 10**6
  assert store.doc_names == sorted(store.doc_names)
  i = store.doc_names.index('os.py')
  assert tok.decode(store.doc(i)) == (corpus.root / 'os.py').read_text(encoding='utf-8')
  assert store.doc_bytes.sum() + 2 * store.num_docs == store.num_tokens
  assert 0 < store.is_val.sum() < 0.1 * store.num_docs


def test_a_trained_tokenizer_learns_only_from_its_own_split_which_no_budget_or_validation_holds(
    tmp_path, monkeypatch):
  from dlmjax.data import budget, tokenizer as tokenizer_lib
  _write_corpus(tmp_path / 'corpus', num_docs=60)
  seen = []
  real_train = tokenizer_lib.BPETokenizer.train.__func__

  def spy(cls, texts, vocab_size):
    texts = list(texts)
    seen.extend(texts)
    return real_train(cls, texts, vocab_size)
  monkeypatch.setattr(tokenizer_lib.BPETokenizer, 'train', classmethod(spy))
  cfg = _cfg(tmp_path, tokenizer='bpe', bpe_vocab_size=300, tokenizer_fraction=0.3)
  _, store = store_lib.prepare_data(cfg)
  docs = list(open_corpus(cfg.corpus).documents())
  want = [d.text for d in docs if 0.2 <= store_lib.val_hash(d.name) < 0.5]
  assert want and seen == want
  assert not (store.is_tokenizer & store.is_val).any()
  assert store.is_tokenizer.sum() == len(want)
  whole = budget.train_split(store, 0, order_seed=0)
  assert not (store.is_tokenizer[whole.doc_ids] | store.is_val[whole.doc_ids]).any()
  assert whole.num_docs == store.num_docs - store.is_val.sum() - store.is_tokenizer.sum()


def test_the_byte_tokenizer_holds_no_document_back(tmp_path):
  from dlmjax.data import budget
  _write_corpus(tmp_path / 'corpus')
  _, store = store_lib.prepare_data(_cfg(tmp_path))
  assert not store.is_tokenizer.any()
  assert budget.train_split(store, 0, 0).num_docs == store.num_docs - store.is_val.sum()
