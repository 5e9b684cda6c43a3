"""The sharded token store: a corpus tokenized into ArrayRecord shards, read by random access.

    store = ShardedStore('/data/stdlib-bytes')       # a directory `dlmjax.data tokenize` wrote
    store.doc(i)                                     # document i's ids, BOS and EOS included
    store.tokens[store.doc_starts[i]:store.doc_starts[i + 1]]   # the same, as one flat array

The flat store (`store.py`) keeps every id in one memmap that each host builds; this one keeps
them in ArrayRecord files (grain's random-access format), one record per document, so a
corpus of billions of tokens is built once by a parallel pipeline (`dlmjax/data/beam.py`)
and read by every host from shared storage. It answers the flat store's interface (the
`Store` attributes), so budgets, epochs and packing (`budget.py`, `pipeline.py`) run on it
unchanged: `store.tokens[idx]` gathers ids by global offset, reading each document it touches
once (the last few hundred documents are cached, since neighbouring batches share them).
Shards are written by `ShardWriter`, one record per document, and described by `write_index`.

Layout of a store directory:
  index.json            written last: a directory with index.json is complete
  docs.npz              per document, in store order: lengths (int64, BOS and EOS included),
                        bytes (int64, UTF-8 bytes of the text), is_val, is_tokenizer
  doc_names.json        the documents' names, in store order (read only when asked for)
  token_bytes.npy       the tokenizer's bytes per id
  tokenizer.json        the tokenizer (`tokenizer.load_tokenizer(DIR)`)
  shards/shard-SSSSS-of-NNNNN.array_record   record j: document j of that shard, its ids as
                        little-endian uint16 (uint32 for vocabularies over 65536)

Store order is the corpus's order: shard s holds the s-th contiguous run of its documents,
so a corpus has the same document indices, validation flags, budgets and training batches
through this store as through the flat one. The validation and tokenizer splits are the flat
store's (`store.is_val_name`, `store.is_tokenizer_name`).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import threading

import numpy as np

from dlmjax.data import store as store_lib
from dlmjax.errors import UserError

SHARDS_VERSION = 1
INDEX_FILE = 'index.json'
# Documents kept decoded in memory: a batch's rows touch consecutive documents of an epoch's
# order, and the rows of the next batch continue from the same ones.
_CACHED_DOCS = 512
# One record per ArrayRecord group: a document is read without decoding its neighbours.
WRITER_OPTIONS = 'group_size:1'


def shard_name(shard: int, num_shards: int) -> str:
  return f'shard-{shard:05d}-of-{num_shards:05d}.array_record'


class ShardWriter:
  """Writes one shard, a document (its ids, BOS and EOS included) per `write`:

      with ShardWriter(path) as w:
        w.write(ids)
  """

  def __init__(self, path: str | os.PathLike):
    from array_record.python import array_record_module

    self._writer = array_record_module.ArrayRecordWriter(os.fspath(path), WRITER_OPTIONS)

  def write(self, ids: np.ndarray) -> None:
    self._writer.write(np.ascontiguousarray(ids, ids.dtype.newbyteorder('<')).tobytes())

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, *exc) -> None:
    self._writer.close()


def write_shard(path: str | os.PathLike, docs: list[np.ndarray]) -> None:
  """Writes one shard whose record j is `docs[j]`."""
  with ShardWriter(path) as writer:
    for ids in docs:
      writer.write(ids)


def _refuse_remote(directory: str | os.PathLike) -> None:
  if '://' in os.fspath(directory):
    raise UserError(f'{os.fspath(directory)!r}: a sharded store is read from a local or '
                    f'mounted directory; mount the bucket (e.g. gcsfuse) and give its path')


def is_sharded_store(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds a whole store; UserError for a path on a remote file system,
  which training cannot read (mount it)."""
  _refuse_remote(directory)
  return (pathlib.Path(directory) / INDEX_FILE).is_file()


class ShardTokens:
  """The documents of a sharded store as one flat, read-only array of ids.

  `tokens[idx]` for an int array or a slice of global offsets (document i starts at
  `doc_starts[i]`) returns the ids there, like the flat store's memmap; `len(tokens)` is T.
  Safe to call from several threads.
  """

  def __init__(self, paths: list[pathlib.Path], doc_starts: np.ndarray, dtype: np.dtype):
    import grain

    self.doc_starts = doc_starts
    self.dtype = np.dtype(dtype).newbyteorder('<')
    self._paths = [str(p) for p in paths]
    self._source = grain.sources.ArrayRecordDataSource(self._paths) if paths else None
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __getstate__(self) -> dict:
    # For worker processes (data.prefetch_workers): each opens the shards itself.
    return {'paths': self._paths, 'doc_starts': self.doc_starts, 'dtype': self.dtype}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state['paths'], state['doc_starts'], state['dtype'].newbyteorder('='))

  def __len__(self) -> int:
    return int(self.doc_starts[-1])

  @property
  def shape(self) -> tuple[int]:
    return (len(self),)

  def docs(self, doc_ids: np.ndarray) -> list[np.ndarray]:
    """The ids of each document in `doc_ids` (distinct ints), read or taken from the cache."""
    with self._lock:
      out: dict[int, np.ndarray] = {}
      missing = []
      for d in map(int, doc_ids):
        if d in self._cache:
          self._cache.move_to_end(d)
          out[d] = self._cache[d]
        else:
          missing.append(d)
    if missing:
      records = self._source.__getitems__(missing)
      read = {d: np.frombuffer(r, self.dtype) for d, r in zip(missing, records)}
      with self._lock:
        for d, ids in read.items():
          self._cache[d] = ids
        while len(self._cache) > _CACHED_DOCS:
          self._cache.popitem(last=False)
      out.update(read)
    return [out[int(d)] for d in doc_ids]

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, slice):
      start, stop, step = index.indices(len(self))
      index = np.arange(start, stop, step)
    index = np.asarray(index)
    flat = index.reshape(-1).astype(np.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= len(self)):
      raise IndexError(f'token offsets outside [0, {len(self)})')
    doc = np.searchsorted(self.doc_starts, flat, side='right') - 1
    uniq, inverse = np.unique(doc, return_inverse=True)
    pieces = self.docs(uniq)
    base = np.zeros(len(uniq), np.int64)
    if len(uniq) > 1:
      np.cumsum([len(p) for p in pieces[:-1]], out=base[1:])
    joined = np.concatenate(pieces) if pieces else np.zeros(0, self.dtype)
    out = joined[base[inverse] + flat - self.doc_starts[doc]]
    return out.reshape(index.shape).astype(self.dtype.newbyteorder('='))


class ShardedStore(store_lib.Store):
  """A sharded store opened read-only; the attributes of `store.Store`, plus `index`."""

  def __init__(self, directory: str | os.PathLike, corpus: str = ''):
    _refuse_remote(directory)
    self.path = pathlib.Path(directory)
    index_file = self.path / INDEX_FILE
    if not index_file.is_file():
      raise UserError(f'{str(self.path)!r} is not a sharded token store (no {INDEX_FILE}); '
                      f'write one with `python -m dlmjax.data tokenize SOURCE --out DIR`')
    self.index = self.meta = json.loads(index_file.read_text())
    if self.index.get('version') != SHARDS_VERSION:
      raise UserError(f'{str(index_file)!r}: store version {self.index.get("version")!r}, '
                      f'this code reads {SHARDS_VERSION}; tokenize the source again')
    self.corpus = corpus or f'store:{self.path}'
    self.vocab_size = int(self.index['vocab_size'])
    with np.load(self.path / 'docs.npz') as docs:
      lengths = docs['lengths']
      self.doc_bytes = docs['bytes']
      self.is_val = docs['is_val']
      self.is_tokenizer = docs['is_tokenizer']
    self.doc_starts = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=self.doc_starts[1:])
    self.token_bytes = np.load(self.path / 'token_bytes.npy')
    shards = [self.path / 'shards' / s['file'] for s in self.index['shards'] if s['docs']]
    self.tokens = ShardTokens(shards, self.doc_starts, np.dtype(self.index['dtype']))
    self._names: list[str] | None = None

  @property
  def doc_names(self) -> list[str]:
    if self._names is None:
      self._names = json.loads((self.path / 'doc_names.json').read_text(encoding='utf-8'))
    return self._names

  def doc(self, i: int) -> np.ndarray:
    return self.tokens.docs(np.array([i]))[0]

  @property
  def source_spec(self) -> str:
    return self.index['source']

  def __repr__(self) -> str:
    return (f'ShardedStore({self.num_docs} docs, {self.num_tokens} tokens in '
            f'{len(self.index["shards"])} shards, {int(self.is_val.sum())} held out, at '
            f'{str(self.path)!r})')


def shard_record(shard: int, num_shards: int, names: list[str], lengths: list[int],
                 doc_bytes: list[int], content_sha256: str) -> dict:
  """What `write_index` needs of one written shard: its documents' names, lengths (ids) and
  UTF-8 sizes in shard order, and a hash of its content."""
  return {'shard': shard, 'file': shard_name(shard, num_shards), 'docs': len(names),
          'tokens': int(sum(lengths)), 'names': names, 'lengths': list(map(int, lengths)),
          'bytes': list(map(int, doc_bytes)), 'sha256': content_sha256}


def write_index(directory: pathlib.Path, records: list[dict], num_shards: int, tokenizer, *,
                source: str, val_fraction: float, tokenizer_fraction: float,
                **extra) -> dict:
  """Writes the store's document arrays, tokenizer and (last) index.json into `directory`,
  whose shards/ holds the shards `records` describe (a shard without a record holds no
  document). Returns the index."""
  by_shard = {r['shard']: r for r in records}
  names, lengths, num_bytes, shards = [], [], [], []
  for s in range(num_shards):
    r = by_shard.get(s, {'docs': 0, 'tokens': 0, 'names': [], 'lengths': [], 'bytes': [],
                         'sha256': ''})
    names += r['names']
    lengths += r['lengths']
    num_bytes += r['bytes']
    shards.append({'file': shard_name(s, num_shards), 'docs': r['docs'], 'tokens': r['tokens'],
                   'sha256': r['sha256']})
  if not names:
    raise UserError(f'{source!r} holds no non-empty documents')
  np.savez(directory / 'docs.npz', lengths=np.array(lengths, np.int64),
           bytes=np.array(num_bytes, np.int64),
           is_val=np.array([store_lib.is_val_name(n, val_fraction) for n in names], bool),
           is_tokenizer=np.array([store_lib.is_tokenizer_name(n, val_fraction,
                                                              tokenizer_fraction)
                                  for n in names], bool))
  (directory / 'doc_names.json').write_text(json.dumps(names), encoding='utf-8')
  np.save(directory / 'token_bytes.npy', tokenizer.token_bytes())
  tokenizer.save(directory)
  index = {
      'version': SHARDS_VERSION, 'source': source, 'tokenizer': tokenizer.kind,
      'tokenizer_fingerprint': tokenizer.fingerprint(), 'vocab_size': tokenizer.vocab_size,
      'dtype': store_dtype(tokenizer.vocab_size).name, 'num_docs': len(names),
      'num_tokens': int(sum(lengths)), 'val_fraction': val_fraction,
      'tokenizer_fraction': tokenizer_fraction, 'shards': shards, **extra,
  }
  (directory / INDEX_FILE).write_text(json.dumps(index, indent=1) + '\n')
  return index


def store_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
