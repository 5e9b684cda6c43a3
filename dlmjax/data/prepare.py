"""Data preparation at scale: a corpus tokenized into a sharded store by an Apache Beam
pipeline, and the BPE tokenizer it uses trained beforehand. `python -m dlmjax.data` is the CLI.

    train_tokenizer('files:corpus/**/*.py', out='tok/', vocab_size=4096)
    store = tokenize('files:corpus/**/*.py', out='shards/', tokenizer_dir='tok/')
    # then: python -m dlmjax.train configs/tiny.yaml data.corpus=store:shards/ ...

The pipeline: the corpus is cut into pieces (`Corpus.split`: contiguous runs of its files,
by default 256 each and at most 1024 pieces), one per shard. Beam hands the pieces to its
workers; a worker reads piece s, tokenizes it and writes shard s where it lies
(`shards.ShardWriter`), so the tokens never pass through the pipeline (no shuffle) and the
store keeps the corpus's order, then writes the shard's record (`shards.shard_record`) last:
the mark that the shard is whole. The driver then writes the index (`shards.write_index`)
from the records. Locally it runs on Beam's DirectRunner in one process per core; flags
after `--` go to Beam unchanged (`--runner=DataflowRunner --project=...`, Flink, Spark), with
the input on a file system every worker reaches. The workers get the tokenizer with the
pipeline, not from a shared directory.

The output is a local (or mounted) directory or any path Beam's file systems reach (gs://,
s3://, hdfs:// with Beam's extras for them). A local store is built in a sibling temporary
directory and renamed into place when complete, so DIR either has a whole store or none. A
remote one is built in place, its index written last (readers open only a directory with an
index), with a marker `.build-KEY` while it is incomplete. Either way an interrupted run
resumes: the next run with the same key keeps every shard whose record was written and
tokenizes the rest. Re-running an unchanged command finds the store up to date (same source
by file sizes and times, same tokenizer, split and sharding) and does nothing. Training reads
a store from a local or mounted path (gcsfuse for a bucket, as MaxText reads ArrayRecord).

Needs the [beam] extra (`pip install -e '.[beam]'`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

from dlmjax import progress as progress_lib
from dlmjax.data import corpus as corpus_lib
from dlmjax.data import shards
from dlmjax.data import store as store_lib
from dlmjax.data import tokenizer as tokenizer_lib
from dlmjax.errors import UserError

TOKENIZER_META = 'tokenizer_meta.json'


def _import_beam():
  # Beam warns at import that Google Cloud's optional clients are absent; nothing here uses them.
  logging.disable(logging.WARNING)
  try:
    import apache_beam
  except ImportError:
    raise UserError("tokenizing into shards needs Apache Beam: pip install -e '.[beam]'") from None
  finally:
    logging.disable(logging.NOTSET)
  return apache_beam


def _read_tokenizer(tokenizer_dir: str | None, val_fraction: float):
  """(tokenizer, tokenizer_fraction): bytes, or the trained one in `tokenizer_dir` with the
  split it learned from (which the store marks as never to be trained on)."""
  if not tokenizer_dir:
    return tokenizer_lib.ByteTokenizer(), 0.0
  directory = pathlib.Path(tokenizer_dir)
  tok = tokenizer_lib.load_tokenizer(directory)
  meta_file = directory / TOKENIZER_META
  if not meta_file.is_file():
    raise UserError(f'--tokenizer {str(directory)!r} has no {TOKENIZER_META}; write the '
                    f'tokenizer with `python -m dlmjax.data train-tokenizer`')
  meta = json.loads(meta_file.read_text())
  if meta['val_fraction'] != val_fraction:
    raise UserError(f'--val-fraction {val_fraction}, but the tokenizer in {str(directory)!r} '
                    f'held out {meta["val_fraction"]}; use --val-fraction {meta["val_fraction"]}')
  return tok, float(meta['tokenizer_fraction'])


class _Progress:
  """Counts the pieces tokenized (their records under `records`) on a progress bar."""

  def __init__(self, records: str, total: int, description: str, stream):
    self.pattern = _fs().join(records, '*.json')
    self.bar = progress_lib.bar(total, description, stream)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)

  def _poll(self):
    while not self._stop.wait(0.5 if not is_remote(self.pattern) else 5.0):
      self.bar.update(self.bar.task_ids[0], completed=len(_matches(self.pattern)))

  def __enter__(self):
    if self.bar:
      self.bar.start()
      self._thread.start()
    return self

  def __exit__(self, *exc):
    if self.bar:
      self._stop.set()
      self._thread.join()
      self.bar.stop()


@contextlib.contextmanager
def _beam_log(path: pathlib.Path):
  """Sends this process's and the workers' stderr (Beam's logging) to `path` while the
  pipeline runs, yielding the real stderr for the progress bar. A failure raises with its
  reason: a UserError of a worker as itself, else with the log's path."""
  sys.stderr.flush()
  saved = os.dup(2)
  real = os.fdopen(os.dup(saved), 'w')
  with open(path, 'w') as log:
    os.dup2(log.fileno(), 2)
    try:
      yield real
    except Exception as e:
      text = str(e)
      if 'UserError: ' in text:
        reason = text.split('UserError: ', 1)[1].split('\n')[0].strip().rstrip("'\"")
        raise UserError(reason) from None
      raise RuntimeError(f'the tokenization pipeline failed ({type(e).__name__}); Beam\'s '
                         f'log is {path}') from e
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      real.close()


def is_remote(path: str) -> bool:
  """Whether `path` names a file system other than the local one (gs://, s3://, ...)."""
  scheme, sep, _ = path.partition('://')
  return bool(sep) and scheme.isalnum() and scheme != 'file'


def _records(build: str, key: str) -> str:
  return _fs().join(build, f'.records-{key}')


def _fs():
  from apache_beam.io.filesystems import FileSystems
  return FileSystems


def _put(path: str, data: bytes) -> None:
  """Writes a whole file: on a remote file system an object appears whole when closed; a
  local file goes through a temporary name and a rename."""
  if is_remote(path):
    with _fs().create(path) as f:
      f.write(data)
  else:
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)


def _get(path: str) -> bytes:
  with _fs().open(path) as f:
    return f.read()


def _upload(local: str, remote: str) -> None:
  with open(local, 'rb') as src, _fs().create(remote) as dst:
    shutil.copyfileobj(src, dst, 16 << 20)


def _matches(pattern: str) -> list[str]:
  return sorted(m.path for m in _fs().match([pattern])[0].metadata_list)


def _pipeline_fns(beam):
  """The pipeline's DoFn (defined once Beam is imported: it subclasses beam.DoFn)."""

  class TokenizeShard(beam.DoFn):
    """(s, piece) -> shard s written under `build`/shards, then its record (with the piece's
    bad inputs) under the records directory; the documents never pass through the pipeline.
    A shard whose record exists was written by an earlier, interrupted run and is kept."""

    def __init__(self, build: str, key: str, num_shards: int, dtype: str, tok):
      self.build, self.key, self.num_shards, self.dtype = build, key, num_shards, dtype
      self.tok = tok  # pickled with the DoFn (through its JSON)

    def setup(self):
      # One core per worker: Beam runs a worker per core, and the tokenizer's own threads
      # would only compete with the other workers for them.
      os.environ['TOKENIZERS_PARALLELISM'] = 'false'

    def process(self, item):
      s, piece = item
      record_path = _fs().join(_records(self.build, self.key), f'{s:07d}.json')
      if _fs().exists(record_path):
        yield s
        return
      piece.report = False  # the driver reports every piece's bad inputs together
      name = shards.shard_name(s, self.num_shards)
      remote = is_remote(self.build)
      if remote:
        fd, local = tempfile.mkstemp(suffix='.array_record')
        os.close(fd)
      else:
        local = os.path.join(self.build, 'shards', name)
      names, lengths, num_bytes, h = [], [], [], hashlib.sha256()
      try:
        with shards.ShardWriter(local) as writer:
          for chunk, pieces in store_lib.encoded(piece.documents(), self.tok,
                                                 np.dtype(self.dtype)):
            for d, ids in zip(chunk, pieces):
              writer.write(ids)
              names.append(d.name)
              lengths.append(len(ids))
              num_bytes.append(len(d.text.encode('utf-8')))
              h.update(d.name.encode('utf-8') + b'\0')
              h.update(ids.tobytes())
        if remote:
          _upload(local, _fs().join(self.build, 'shards', name))
      finally:
        if remote:
          os.remove(local)
      record = shards.shard_record(s, self.num_shards, names, lengths, num_bytes, h.hexdigest())
      record['odd'] = piece.odd
      _put(record_path, json.dumps(record).encode())
      yield s

  return TokenizeShard


def _beam_options(beam_args: list[str], workers: int):
  from apache_beam.options.pipeline_options import PipelineOptions

  args = list(beam_args)
  if not any(a.startswith('--runner') for a in args):
    args += ['--runner=DirectRunner', '--direct_running_mode=multi_processing',
             f'--direct_num_workers={workers or os.cpu_count() or 1}']
  return PipelineOptions(args)


def _build_key(corpus: corpus_lib.Corpus, tok, val_fraction: float, tokenizer_fraction: float,
               num_shards: int) -> str:
  text = (f'shards-v{shards.SHARDS_VERSION}\0{corpus.spec}\0{corpus.stat_fingerprint()}\0'
          f'{tok.fingerprint()}\0{val_fraction!r}\0{tokenizer_fraction!r}\0{num_shards}')
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def tokenize(source: str, out: str | os.PathLike, *, tokenizer_dir: str | None = None,
             val_fraction: float = 0.02, num_shards: int = 0, workers: int = 0,
             beam_args: list[str] = ()) -> shards.ShardedStore | dict:
  """Tokenizes the corpus `source` (a `data.corpus` spec) into a sharded store at `out`, a
  local directory or a path on a file system Beam reaches (module docstring).

  tokenizer_dir: a tokenizer from `train_tokenizer` (None: bytes). num_shards: about how
  many shards (0: one per 256 documents, at most 1024; a corpus that cannot be cut, such as
  one jsonl file, is one). workers: DirectRunner processes (0: one per core). beam_args:
  Beam's own flags. Returns the store (for a remote `out`, its index); does nothing but open
  it when it is up to date.
  """
  beam = _import_beam()
  out = os.fspath(out)
  remote = is_remote(out)
  if not remote:
    out = os.path.abspath(os.path.expanduser(out))
  corpus = corpus_lib.open_corpus(source)
  tok, tokenizer_fraction = _read_tokenizer(tokenizer_dir, val_fraction)
  pieces = corpus.split(num_shards or min(math.ceil((corpus.size_hint() or 1) / 256), 1024))
  num_shards = len(pieces)
  key = _build_key(corpus, tok, val_fraction, tokenizer_fraction, num_shards)
  index_path = _fs().join(out, shards.INDEX_FILE)
  if _fs().exists(index_path):
    index = json.loads(_get(index_path))
    if index.get('build_key') == key:
      print(f'{out}: up to date ({index["num_docs"]} documents, {index["num_tokens"]} '
            f'tokens); nothing to do', file=sys.stderr)
      return index if remote else shards.ShardedStore(out)
    raise UserError(f'--out {out!r} holds a store of other data (built from '
                    f'{index.get("source")!r}); remove it or choose another directory')
  build = _start_build(out, key, remote)
  records = _records(build, key)
  dtype = shards.store_dtype(tok.vocab_size).name
  tokenize_shard = _pipeline_fns(beam)
  log = pathlib.Path(build if not remote else tempfile.mkdtemp(prefix='dlmjax-beam-'),
                     'beam.log')
  t0 = time.time()
  with _beam_log(log) as stderr:
    with _Progress(records, num_shards, 'tokenizing', stderr):
      with beam.Pipeline(options=_beam_options(list(beam_args), workers)) as p:
        _ = (p
             | 'pieces' >> beam.Create(list(enumerate(pieces)))
             | 'spread' >> beam.Reshuffle()
             | 'tokenize' >> beam.ParDo(tokenize_shard(build, key, num_shards, dtype, tok)))
  seconds = time.time() - t0
  written = [json.loads(_get(path)) for path in _matches(_fs().join(records, '*.json'))]
  odd: dict[str, list[str]] = {}
  for record in written:
    for kind, names in record.pop('odd').items():
      odd.setdefault(kind, []).extend(names)
  corpus_lib.report_odd(source, odd)
  meta = dict(source=source, val_fraction=val_fraction, tokenizer_fraction=tokenizer_fraction,
              build_key=key, build_s=round(seconds, 3),
              source_bytes=int(sum(sum(r['bytes']) for r in written)))
  if remote:
    index = _finish_remote(out, key, written, num_shards, tok, meta)
  else:
    index = _finish_local(out, build, records, written, num_shards, tok, meta)
  mb = index['source_bytes'] / 1e6
  print(f'{out}: {index["num_docs"]} documents, {index["num_tokens"]} tokens in '
        f'{num_shards} shards, {seconds:.1f} s ({mb / seconds:.2f} MB/s of text)', file=sys.stderr)
  return index if remote else shards.ShardedStore(out)


def _start_build(out: str, key: str, remote: bool) -> str:
  """The directory the shards are written under: a local store's sibling `.NAME.tmp-KEY`
  (kept from an interrupted run of the same key, so that it resumes), or a remote `out`
  itself, marked `.build-KEY` (refused if it holds anything else)."""
  if remote:
    marker = _fs().join(out, f'.build-{key}')
    found = _matches(_fs().join(out, '*')) + _matches(_fs().join(out, '.*'))
    if found and marker not in found:
      raise UserError(f'--out {out!r} holds files and no store of this build (e.g. '
                      f'{found[0]!r}); remove them or choose another path')
    if not found:
      _put(marker, key.encode())
    return out
  path = pathlib.Path(out)
  if path.exists() and (not path.is_dir() or any(path.iterdir())):
    raise UserError(f'--out {out!r} exists and is not a sharded store; remove it or '
                    f'choose another directory')
  path.parent.mkdir(parents=True, exist_ok=True)
  for old in path.parent.glob(f'.{path.name}.tmp-*'):
    if old.name != f'.{path.name}.tmp-{key}':
      shutil.rmtree(old, ignore_errors=True)  # another build's leftovers
  tmp = path.parent / f'.{path.name}.tmp-{key}'
  for sub in ('shards', f'.records-{key}'):
    (tmp / sub).mkdir(parents=True, exist_ok=True)
  return str(tmp)


def _finish_local(out, build, records, written, num_shards, tok, meta) -> dict:
  tmp = pathlib.Path(build)
  index = shards.write_index(tmp, written, num_shards, tok, **meta)
  shutil.rmtree(records)
  if os.path.exists(out):
    os.rmdir(out)  # empty (checked by _start_build)
  os.rename(tmp, out)
  return index


def _finish_remote(out, key, written, num_shards, tok, meta) -> dict:
  """The index and document arrays, written locally and uploaded with the index last; then
  the records and the build marker go."""
  with tempfile.TemporaryDirectory(prefix='dlmjax-index-') as d:
    index = shards.write_index(pathlib.Path(d), written, num_shards, tok, **meta)
    files = sorted(os.listdir(d), key=lambda f: f == shards.INDEX_FILE)
    for f in files:
      _upload(os.path.join(d, f), _fs().join(out, f))
  leftovers = _matches(_fs().join(_records(out, key), '*'))
  _fs().delete(leftovers + [_fs().join(out, f'.build-{key}')])
  return index


def train_tokenizer(source: str, out: str | os.PathLike, *, vocab_size: int,
                    val_fraction: float = 0.02, tokenizer_fraction: float = 0.02,
                    sample_docs: int = 0, seed: int = 0) -> tokenizer_lib.Tokenizer:
  """Trains a byte-level BPE (HF tokenizers; MASK, BOS, EOS, PAD reserved) on the corpus's
  tokenizer split (`store.is_tokenizer_name`: documents no budget and no validation holds),
  or on a seeded sample of `sample_docs` of them, and saves it in `out` with what it learned
  from (tokenizer_meta.json), where `tokenize --tokenizer` and a run directory find it."""
  corpus = corpus_lib.open_corpus(source)
  split = corpus.select(
      lambda name: store_lib.is_tokenizer_name(name, val_fraction, tokenizer_fraction))
  if sample_docs:
    names = (split.names if isinstance(split, corpus_lib.FilesCorpus)
             else [d.name for d in split.documents()])
    if len(names) > sample_docs:
      chosen = set(np.random.default_rng(seed).choice(names, sample_docs, replace=False))
      split = split.select(chosen.__contains__)
  texts = [d.text for d in split.documents()]
  if not texts:
    raise UserError(f'--tokenizer-fraction {tokenizer_fraction}: no document of {source!r} '
                    f'falls in the tokenizer split; raise it')
  tok = tokenizer_lib.BPETokenizer.train(iter(texts), vocab_size)
  out = pathlib.Path(os.path.expanduser(os.fspath(out)))
  tok.save(out)
  meta = {'source': source, 'vocab_size': vocab_size, 'val_fraction': val_fraction,
          'tokenizer_fraction': tokenizer_fraction, 'sample_docs': sample_docs, 'seed': seed,
          'docs': len(texts), 'bytes': sum(len(t.encode('utf-8')) for t in texts)}
  tmp = out / f'.{TOKENIZER_META}.tmp'
  tmp.write_text(json.dumps(meta, indent=1) + '\n')
  os.replace(tmp, out / TOKENIZER_META)
  return tok
