"""Data preparation at scale: a corpus tokenized into a sharded store by an Apache Beam
pipeline, and the BPE tokenizer it uses trained beforehand. `python -m dlmjax.data` is the CLI.

    train_tokenizer('files:corpus/**/*.py', out='tok/', vocab_size=4096)
    store = tokenize('files:corpus/**/*.py', out='shards/', tokenizer_dir='tok/')
    # then: python -m dlmjax.train configs/tiny.yaml data.corpus=store:shards/ ...

The pipeline: the corpus is cut into pieces (`Corpus.split`: contiguous runs of its files,
by default 256 each and at most 1024 pieces), one per shard. Beam hands the pieces to its
workers; a worker reads piece s, tokenizes it and writes shard s where it lies
(`shards.ShardWriter`), so the tokens never pass through the pipeline (no shuffle) and the
store keeps the corpus's order; the driver then writes the index (`shards.write_index`) from
the shards' records. Locally it runs on Beam's DirectRunner in one process per core; flags
after `--` go to Beam unchanged (`--runner=DataflowRunner --project=...`, Flink, Spark), with
the input and the output directory on a file system every worker reaches.

Atomic and resumable by rebuilding: the store is built in a sibling temporary directory and
renamed into place when complete, so DIR either has a whole store or none. Re-running an
unchanged command finds the store up to date (same source by file sizes and times, same
tokenizer, split and sharding) and does nothing; an interrupted run leaves only the
temporary directory, which the next run discards.

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
import threading
import time

import numpy as np

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
  """Counts the pieces the workers have tokenized (a marker file each) on a progress bar."""

  def __init__(self, directory: pathlib.Path, total: int, description: str, stream):
    self.directory = directory
    self.bar = store_lib._progress(total, description, stream)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)

  def _poll(self):
    while not self._stop.wait(0.5):
      self.bar.update(self.bar.task_ids[0], completed=len(os.listdir(self.directory)))

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


def _encode(tok, texts: list[str], dtype: np.dtype) -> list[np.ndarray]:
  """Each text's ids as the store keeps them: BOS, the text's ids, EOS."""
  bos, eos = np.array([tokenizer_lib.BOS_ID], dtype), np.array([tokenizer_lib.EOS_ID], dtype)
  return [np.concatenate([bos, ids.astype(dtype), eos]) for ids in tok.encode_batch_np(texts)]


def _pipeline_fns(beam):
  """The pipeline's DoFn (defined once Beam is imported: it subclasses beam.DoFn)."""

  class TokenizeShard(beam.DoFn):
    """(s, piece) -> shard s, written where it lies, and its record (shards.shard_record) as
    JSON beside it; the documents themselves never pass through the pipeline."""

    def __init__(self, tmp: str, num_shards: int, dtype: str):
      self.tmp, self.num_shards, self.dtype = tmp, num_shards, dtype

    def setup(self):
      # One core per worker: Beam runs a worker per core, and the tokenizer's own threads
      # would only compete with the other workers for them.
      os.environ['TOKENIZERS_PARALLELISM'] = 'false'
      self.tok = tokenizer_lib.load_tokenizer(self.tmp)

    def process(self, item):
      s, piece = item
      piece.report = False  # the driver reports every piece's bad inputs together
      tmp = pathlib.Path(self.tmp)
      names, lengths, num_bytes, h = [], [], [], hashlib.sha256()
      with shards.ShardWriter(tmp / 'shards' / shards.shard_name(s, self.num_shards)) as writer:
        for chunk in store_lib._chunks(piece.documents(), store_lib._ENCODE_CHUNK_DOCS):
          for d, ids in zip(chunk, _encode(self.tok, [d.text for d in chunk],
                                           np.dtype(self.dtype))):
            writer.write(ids)
            names.append(d.name)
            lengths.append(len(ids))
            num_bytes.append(len(d.text.encode('utf-8')))
            h.update(d.name.encode('utf-8') + b'\0')
            h.update(ids.tobytes())
      record = shards.shard_record(s, self.num_shards, names, lengths, num_bytes, h.hexdigest())
      record['odd'] = piece.odd
      (tmp / 'records' / f'{s:07d}.json').write_text(json.dumps(record))
      (tmp / 'progress' / f'{s:07d}').touch()
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
             beam_args: list[str] = ()) -> shards.ShardedStore:
  """Tokenizes the corpus `source` (a `data.corpus` spec) into a sharded store at `out`.

  tokenizer_dir: a tokenizer from `train_tokenizer` (None: bytes). num_shards: about how
  many shards (0: one per 256 documents, at most 1024; a corpus that cannot be cut, such as
  one jsonl file, is one). workers: DirectRunner processes (0: one per core). beam_args:
  Beam's own flags. Returns the store; does nothing but open it when it is up to date.
  """
  beam = _import_beam()
  out = pathlib.Path(os.path.expanduser(os.fspath(out)))
  corpus = corpus_lib.open_corpus(source)
  tok, tokenizer_fraction = _read_tokenizer(tokenizer_dir, val_fraction)
  pieces = corpus.split(num_shards or min(math.ceil((corpus.size_hint() or 1) / 256), 1024))
  num_shards = len(pieces)
  key = _build_key(corpus, tok, val_fraction, tokenizer_fraction, num_shards)
  if shards.is_sharded_store(out):
    index = json.loads((out / shards.INDEX_FILE).read_text())
    if index.get('build_key') == key:
      print(f'{out}: up to date ({index["num_docs"]} documents, {index["num_tokens"]} '
            f'tokens); nothing to do', file=sys.stderr)
      return shards.ShardedStore(out)
    raise UserError(f'--out {str(out)!r} holds a store of other data (built from '
                    f'{index.get("source")!r}); remove it or choose another directory')
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserError(f'--out {str(out)!r} exists and is not a sharded store; remove it or '
                    f'choose another directory')
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f'.{out.name}.tmp-{key}'
  shutil.rmtree(tmp, ignore_errors=True)  # an interrupted build's leftovers
  for sub in ('shards', 'records', 'progress'):
    (tmp / sub).mkdir(parents=True)
  tok.save(tmp)
  dtype = shards.store_dtype(tok.vocab_size).name
  tokenize_shard = _pipeline_fns(beam)
  t0 = time.time()
  with _beam_log(tmp / 'beam.log') as stderr:
    with _Progress(tmp / 'progress', num_shards, 'tokenizing', stderr):
      with beam.Pipeline(options=_beam_options(list(beam_args), workers)) as p:
        _ = (p
             | 'pieces' >> beam.Create(list(enumerate(pieces)))
             | 'spread' >> beam.Reshuffle()
             | 'tokenize' >> beam.ParDo(tokenize_shard(str(tmp), num_shards, dtype)))
  seconds = time.time() - t0
  records = [json.loads(f.read_text()) for f in sorted((tmp / 'records').iterdir())]
  odd: dict[str, list[str]] = {}
  for record in records:
    for kind, names in record.pop('odd').items():
      odd.setdefault(kind, []).extend(names)
  corpus_lib.report_odd(source, odd)
  index = shards.write_index(
      tmp, records, num_shards, tok, source=source, val_fraction=val_fraction,
      tokenizer_fraction=tokenizer_fraction, build_key=key, build_s=round(seconds, 3),
      source_bytes=int(sum(sum(r['bytes']) for r in records)))
  shutil.rmtree(tmp / 'records')
  shutil.rmtree(tmp / 'progress')
  if out.exists():
    out.rmdir()  # empty (checked above)
  os.rename(tmp, out)
  mb = index['source_bytes'] / 1e6
  print(f'{out}: {index["num_docs"]} documents, {index["num_tokens"]} tokens in '
        f'{num_shards} shards, {seconds:.1f} s ({mb / seconds:.2f} MB/s of text)', file=sys.stderr)
  return shards.ShardedStore(out)


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
