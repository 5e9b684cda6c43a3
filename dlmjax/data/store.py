"""The token store: every document's ids on disk, built once per corpus and tokenizer.

    tokenizer, store = prepare_data(cfg.data)
    store.tokens[store.doc_starts[i]:store.doc_starts[i + 1]]   # == store.doc(i)

Document i is stored as `[BOS] + tokenizer.encode(text) + [EOS]`, all documents end to end
in one flat memmap (`T` tokens, uint16 while the vocabulary fits). Alongside: the document
bounds, names, UTF-8 sizes, the validation flag and the tokenizer's `token_bytes`.

A store lives in `CACHE/stores/<key>/`, where the key hashes the corpus fingerprint, the
tokenizer fingerprint and `val_fraction`: changing any file of the corpus, the tokenizer or
the split builds a new store, and anything else reuses it. `CACHE` is `data.cache_dir`, else
`$DLMJAX_CACHE`, else `~/.cache/dlmjax`. A store is built in a temporary directory next to
its final place and renamed into it, so a reader never sees half a store; when two processes
build the same store at once, the one that renames second discards its copy and uses the
first's.

The validation split is by document name: a document is held out when sha1(name), read as a
fraction in [0, 1), is below `val_fraction`. Names are stable across machines, and adding
documents to a corpus never moves an old document between the splits.

A trained (BPE) tokenizer learns from its own split, the next `tokenizer_fraction` of the
same hash, [val_fraction, val_fraction + tokenizer_fraction): those documents are never
trained on nor validated on. So the tokenizer has seen no text of any unique budget (at a
small U, a tokenizer trained on the whole training split would have seen text beyond the
budget) nor of validation, and every budget of a run shares one tokenizer, which keeps the
budgets nested. The byte tokenizer learns nothing and holds no documents back.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time
from typing import Iterator

import numpy as np

from dlmjax import progress as progress_lib
from dlmjax.data import corpus as corpus_lib
from dlmjax.data import tokenizer as tokenizer_lib
from dlmjax.errors import UserError

# Bump when the on-disk layout or the meaning of stored ids changes: old stores are ignored.
STORE_VERSION = 2  # 2: is_tokenizer.npy
_ENCODE_CHUNK_DOCS = 256


def cache_root(data_cfg) -> pathlib.Path:
  """`data.cache_dir`, else $DLMJAX_CACHE, else ~/.cache/dlmjax."""
  root = data_cfg.cache_dir or os.environ.get('DLMJAX_CACHE') or '~/.cache/dlmjax'
  return pathlib.Path(os.path.expanduser(root))


def val_hash(name: str) -> float:
  """sha1 of a document name as a fraction in [0, 1); below val_fraction means validation."""
  return int.from_bytes(hashlib.sha1(name.encode('utf-8')).digest()[:8], 'big') / 2.0**64


def is_val_name(name: str, val_fraction: float) -> bool:
  return val_hash(name) < val_fraction


def is_tokenizer_name(name: str, val_fraction: float, tokenizer_fraction: float) -> bool:
  """Whether a document belongs to the split a trained tokenizer learns from."""
  return val_fraction <= val_hash(name) < val_fraction + tokenizer_fraction


class Store:
  """What budgets, epochs and packing read of a store: the flat `TokenStore` below and the
  sharded `shards.ShardedStore` both have these attributes.

  Attributes:
    tokens: [T] ids of the documents end to end (a memmap, or the shards read as one array),
      indexable by an int array or a slice of offsets.
    doc_starts: int64 [N + 1]; document i is tokens[doc_starts[i]:doc_starts[i + 1]].
    doc_names: N names (list[str]).
    doc_bytes: int64 [N], UTF-8 bytes of each document's text.
    is_val: bool [N], held out for validation.
    is_tokenizer: bool [N], held out to train the tokenizer (all False for bytes).
    token_bytes: int32 [V], the tokenizer's bytes per id (to count bytes of cut documents).
    vocab_size: V. corpus: the `data.corpus` spec this store was opened for. path, meta.
  """

  tokens: np.ndarray
  doc_starts: np.ndarray
  doc_bytes: np.ndarray
  is_val: np.ndarray
  is_tokenizer: np.ndarray
  token_bytes: np.ndarray
  vocab_size: int
  corpus: str
  path: pathlib.Path
  meta: dict

  @property
  def num_docs(self) -> int:
    return len(self.doc_bytes)

  @property
  def num_tokens(self) -> int:
    return len(self.tokens)

  @property
  def doc_lengths(self) -> np.ndarray:
    """int64 [N]: tokens of each document, BOS and EOS included."""
    return np.diff(self.doc_starts)

  def doc(self, i: int) -> np.ndarray:
    """Document i's ids, BOS and EOS included."""
    return self.tokens[self.doc_starts[i]:self.doc_starts[i + 1]]

  @property
  def source_spec(self) -> str:
    """The `data.corpus` spec of the text the documents came from (for a mixture, its
    weights: `corpus.mixture_weights`)."""
    return self.corpus


class TokenStore(Store):
  """A built flat store opened read-only: `tokens` is one np.memmap, uint16 (uint32 for
  vocabularies over 65536)."""

  def __init__(self, directory: str | os.PathLike, corpus: str = ''):
    self.path = pathlib.Path(directory)
    meta_file = self.path / 'meta.json'
    if not meta_file.is_file():
      raise UserError(f'{str(self.path)!r} is not a token store (no meta.json)')
    self.meta = json.loads(meta_file.read_text())
    self.corpus = corpus or self.meta['corpus']
    self.vocab_size = int(self.meta['vocab_size'])
    num_tokens = int(self.meta['num_tokens'])
    self.tokens = np.memmap(self.path / 'tokens.bin', dtype=np.dtype(self.meta['dtype']),
                            mode='r', shape=(num_tokens,))
    self.doc_starts = np.load(self.path / 'doc_starts.npy')
    self.doc_bytes = np.load(self.path / 'doc_bytes.npy')
    self.is_val = np.load(self.path / 'is_val.npy')
    self.is_tokenizer = np.load(self.path / 'is_tokenizer.npy')
    self.token_bytes = np.load(self.path / 'token_bytes.npy')
    self.doc_names = json.loads((self.path / 'doc_names.json').read_text(encoding='utf-8'))

  def __reduce__(self):
    # Reopened, not copied, in a worker process (data.prefetch_workers): pickling the memmap
    # would copy every token.
    return TokenStore, (self.path, self.corpus)

  def __repr__(self) -> str:
    return (f'TokenStore({self.corpus!r}, {self.num_docs} docs, {self.num_tokens} tokens, '
            f'{int(self.is_val.sum())} held out, {int(self.is_tokenizer.sum())} for the '
            f'tokenizer, at {str(self.path)!r})')


def store_key(corpus_fingerprint: str, tokenizer_fingerprint: str, val_fraction: float,
              tokenizer_fraction: float = 0.0) -> str:
  text = f'v{STORE_VERSION}\0{corpus_fingerprint}\0{tokenizer_fingerprint}\0{val_fraction!r}'
  if tokenizer_fraction:
    text += f'\0{tokenizer_fraction!r}'
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def held_out_for_tokenizer(data_cfg) -> float:
  """The tokenizer split's share of documents: `data.tokenizer_fraction` for a trained
  tokenizer, 0 for bytes."""
  return data_cfg.tokenizer_fraction if data_cfg.tokenizer == 'bpe' else 0.0


def _chunks(docs: Iterator[corpus_lib.Document], size: int) -> Iterator[list]:
  chunk = []
  for doc in docs:
    chunk.append(doc)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def encoded(docs: Iterator[corpus_lib.Document], tokenizer: tokenizer_lib.Tokenizer,
            dtype) -> Iterator[tuple[list[corpus_lib.Document], list[np.ndarray]]]:
  """The documents in chunks (the tokenizer encodes a chunk at once, in parallel), each
  with its documents' ids as a store keeps them: BOS, the text's ids, EOS, in `dtype`."""
  bos = np.array([tokenizer_lib.BOS_ID], dtype)
  eos = np.array([tokenizer_lib.EOS_ID], dtype)
  for chunk in _chunks(docs, _ENCODE_CHUNK_DOCS):
    yield chunk, [np.concatenate([bos, ids.astype(dtype), eos])
                  for ids in tokenizer.encode_batch_np([d.text for d in chunk])]


def build_store(directory: pathlib.Path, corpus: corpus_lib.Corpus,
                tokenizer: tokenizer_lib.Tokenizer, val_fraction: float,
                corpus_fingerprint: str = '', tokenizer_fraction: float = 0.0) -> None:
  """Writes a store of `corpus` into the (new, empty) `directory`; not atomic by itself."""
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
  names, num_bytes, lengths = [], [], []
  bar = progress_lib.bar(corpus.size_hint(), f'tokenizing {corpus.spec}')
  t0 = time.time()
  with open(directory / 'tokens.bin', 'wb') as f:
    if bar:
      bar.start()
    try:
      for chunk, pieces in encoded(corpus.documents(), tokenizer, dtype):
        f.write(np.concatenate(pieces).tobytes())
        lengths += [len(ids) for ids in pieces]
        names += [d.name for d in chunk]
        num_bytes += [len(d.text.encode('utf-8')) for d in chunk]
        if bar:
          bar.advance(bar.task_ids[0], len(chunk))
    finally:
      if bar:
        bar.stop()
  if not names:
    raise UserError(f'data.corpus={corpus.spec!r} holds no non-empty documents')
  doc_starts = np.zeros(len(names) + 1, np.int64)
  np.cumsum(lengths, out=doc_starts[1:])
  np.save(directory / 'doc_starts.npy', doc_starts)
  np.save(directory / 'doc_bytes.npy', np.array(num_bytes, np.int64))
  np.save(directory / 'is_val.npy', np.array([is_val_name(n, val_fraction) for n in names], bool))
  np.save(directory / 'is_tokenizer.npy', np.array(
      [is_tokenizer_name(n, val_fraction, tokenizer_fraction) for n in names], bool))
  np.save(directory / 'token_bytes.npy', tokenizer.token_bytes())
  (directory / 'doc_names.json').write_text(json.dumps(names), encoding='utf-8')
  tokenizer.save(directory)
  meta = {
      'version': STORE_VERSION, 'corpus': corpus.spec, 'corpus_fingerprint': corpus_fingerprint,
      'tokenizer': tokenizer.kind, 'tokenizer_fingerprint': tokenizer.fingerprint(),
      'vocab_size': tokenizer.vocab_size, 'dtype': np.dtype(dtype).name,
      'num_tokens': int(doc_starts[-1]), 'num_docs': len(names), 'val_fraction': val_fraction,
      'tokenizer_fraction': tokenizer_fraction,
      'build_s': round(time.time() - t0, 3),
  }
  # Written last: a directory with meta.json is complete.
  (directory / 'meta.json').write_text(json.dumps(meta, indent=1) + '\n')


def _publish(tmp: pathlib.Path, final: pathlib.Path) -> None:
  """Renames the built `tmp` to `final`; if another builder got there first, keeps theirs."""
  try:
    os.rename(tmp, final)
  except OSError:
    if not (final / 'meta.json').is_file():
      raise
    shutil.rmtree(tmp, ignore_errors=True)


def _cached_tokenizer(data_cfg, corpus: corpus_lib.Corpus, corpus_fp: str,
                      root: pathlib.Path) -> tokenizer_lib.Tokenizer:
  """The tokenizer for `data_cfg`; a trained BPE is cached by corpus, splits and vocabulary.
  It learns from the tokenizer split only (the module docstring)."""
  fraction = held_out_for_tokenizer(data_cfg)

  def tokenizer_texts() -> Iterator[str]:
    for doc in corpus.documents():
      if is_tokenizer_name(doc.name, data_cfg.val_fraction, fraction):
        yield doc.text

  if data_cfg.tokenizer != 'bpe':
    return tokenizer_lib.build_tokenizer(data_cfg, tokenizer_texts)
  if not any(True for _ in tokenizer_texts()):
    raise UserError(f'data.tokenizer_fraction={fraction}: no document of {corpus.spec!r} '
                    f'falls in the tokenizer split; raise it')
  key = hashlib.sha256(f'bpe-v2\0{corpus_fp}\0{data_cfg.val_fraction!r}\0{fraction!r}\0'
                       f'{data_cfg.bpe_vocab_size}'.encode()).hexdigest()[:20]
  directory = root / 'tokenizers' / key
  if (directory / tokenizer_lib.TOKENIZER_FILE).is_file():
    return tokenizer_lib.load_tokenizer(directory)
  tok = tokenizer_lib.build_tokenizer(data_cfg, tokenizer_texts)
  tok.save(directory)  # atomic: concurrent trainers write identical files
  return tok


def prepare_data(data_cfg) -> tuple[tokenizer_lib.Tokenizer, TokenStore]:
  """The tokenizer and token store for `data_cfg` (a DataConfig), built on first use.

  `data.corpus=store:DIR` opens the sharded store `python -m dlmjax.data tokenize` wrote
  in DIR (`shards.py`) with its own tokenizer; `data.tokenizer` and `data.val_fraction`
  must name what it was built with.

  Raises UserError for a bad corpus spec or an unreadable cache directory.
  """
  if data_cfg.corpus.startswith('store:'):
    return _open_sharded(data_cfg)
  corpus = corpus_lib.open_corpus(data_cfg.corpus)
  corpus_fp = corpus.fingerprint()
  root = cache_root(data_cfg)
  try:
    (root / 'stores').mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f'data.cache_dir: cannot create {str(root)!r} ({e.strerror})') from None
  tokenizer = _cached_tokenizer(data_cfg, corpus, corpus_fp, root)
  fraction = held_out_for_tokenizer(data_cfg)
  key = store_key(corpus_fp, tokenizer.fingerprint(), data_cfg.val_fraction, fraction)
  final = root / 'stores' / key
  if not (final / 'meta.json').is_file():
    tmp = pathlib.Path(tempfile.mkdtemp(dir=root / 'stores', prefix=f'.{key}.tmp-'))
    try:
      build_store(tmp, corpus, tokenizer, data_cfg.val_fraction, corpus_fp, fraction)
      _publish(tmp, final)
    finally:
      if tmp.exists():
        shutil.rmtree(tmp, ignore_errors=True)
  return tokenizer, TokenStore(final, corpus=data_cfg.corpus)


def _open_sharded(data_cfg) -> tuple[tokenizer_lib.Tokenizer, Store]:
  from dlmjax.data import shards

  where = os.path.expanduser(data_cfg.corpus.removeprefix('store:'))
  if not shards.is_sharded_store(where):  # a str: pathlib would fold gs:// into gs:/
    raise UserError(f'data.corpus={data_cfg.corpus!r}: {where!r} is not a sharded '
                    f'token store (no {shards.INDEX_FILE}); write one with `python -m '
                    f'dlmjax.data tokenize SOURCE --out {where}`')
  directory = pathlib.Path(where)
  sharded = shards.ShardedStore(directory, corpus=data_cfg.corpus)
  index = sharded.index
  if data_cfg.tokenizer != index['tokenizer']:
    raise UserError(f'data.tokenizer={data_cfg.tokenizer!r}, but the store {str(directory)!r} '
                    f'was tokenized with {index["tokenizer"]!r}; set data.tokenizer='
                    f'{index["tokenizer"]}')
  if data_cfg.tokenizer == 'bpe' and data_cfg.bpe_vocab_size < sharded.vocab_size:
    raise UserError(f'data.bpe_vocab_size={data_cfg.bpe_vocab_size}, but the store\'s '
                    f'tokenizer has {sharded.vocab_size} ids; set data.bpe_vocab_size='
                    f'{sharded.vocab_size}')
  if data_cfg.val_fraction != index['val_fraction']:
    raise UserError(f'data.val_fraction={data_cfg.val_fraction}, but the store '
                    f'{str(directory)!r} holds out {index["val_fraction"]}; set '
                    f'data.val_fraction={index["val_fraction"]}')
  return tokenizer_lib.load_tokenizer(directory), sharded
