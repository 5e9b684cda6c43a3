"""Document sources, named by a spec string (`data.corpus`).

    corpus = open_corpus('stdlib')            # the running Python's standard library
    corpus = open_corpus('files:data/**/*.md')  # every file the recursive glob matches
    corpus = open_corpus('jsonl:web.jsonl:text')  # one document per line, field `text`
    corpus = open_corpus('parquet:web/*.parquet:text')  # one document per row, column `text`
    corpus = open_corpus('tfds:~/tensorflow_datasets/c4/en/3.0.1:train:text')  # a prepared TFDS
    corpus = open_corpus('seqio:my_tasks:c4_v220:train:targets')  # a seqio Task or Mixture
    corpus = open_corpus('mix:0.7*parquet:web/*.parquet:text|0.3*stdlib')  # weighted mixture
    for doc in corpus.documents(): ...

A corpus yields `Document(name, text)` in a fixed order. Names matter: the validation split
hashes them (`dlmjax/data/store.py`), so they are chosen to be independent of where the
corpus lies on disk (paths relative to the corpus root, the jsonl file's base name).
Bad input files, the policy (each reported by name on stderr when the corpus is read, in
one line per kind): a file with a NUL byte is binary and skipped; a file that is not valid
UTF-8 is read with its undecodable bytes replaced by U+FFFD; an empty or whitespace-only
file is skipped; a file that vanishes or cannot be read between the glob and its reading
stops the run with one line naming it.
"""

from __future__ import annotations

import abc
import glob
import hashlib
import json
import math
import os
import pathlib
import sys
import sysconfig
from typing import Callable, Iterator, NamedTuple

from dlmjax.errors import UserError

# Directories of the standard library that are not the library itself: installed packages
# and the test suites (which hold deliberately odd, generated or non-UTF-8 files).
_STDLIB_SKIP_DIRS = frozenset({'site-packages', 'dist-packages', 'test', 'tests', 'idle_test',
                               '__pycache__'})


class Document(NamedTuple):
  name: str
  text: str


def report_odd(spec: str, odd: dict[str, list[str]]) -> None:
  """One line on stderr per kind of bad input (`Corpus.odd`) that occurred, naming the first
  five documents."""
  for kind, names in odd.items():
    if names:
      shown = ', '.join(names[:5]) + (f' and {len(names) - 5} more' if len(names) > 5 else '')
      print(f'data.corpus={spec}: {len(names)} {kind}: {shown}', file=sys.stderr)


class Corpus(abc.ABC):
  """A deterministic sequence of documents and a fingerprint of their content.

  After `documents()` has run out, `odd` maps each kind of bad input the policy met (e.g.
  'file(s) empty, skipped') to the names of the files or rows concerned; `report` (default
  True) has them printed, one line per kind, by `report_odd`. A pipeline that reads a corpus
  in pieces turns `report` off and reports the pieces' `odd` together.
  """

  spec: str
  odd: dict[str, list[str]] = {}
  report: bool = True

  @abc.abstractmethod
  def documents(self) -> Iterator[Document]:
    """Yields the non-empty documents, always in the same order."""

  @abc.abstractmethod
  def fingerprint(self) -> str:
    """Hex sha256 over the names and contents; it changes iff the documents may change."""

  def size_hint(self) -> int | None:
    """An upper bound on the number of documents (for progress bars), or None."""
    return None

  def stat_fingerprint(self) -> str:
    """A fingerprint that changes when the documents may have changed, cheap enough to take
    before tokenizing a corpus of billions of tokens (file sizes and times where there are
    files); `fingerprint()` by default."""
    return self.fingerprint()

  def split(self, parts: int) -> list[Corpus]:
    """About `parts` picklable corpora whose documents, one after another, are this one's:
    the pieces a parallel pipeline reads. One piece (itself) unless the corpus can be cut."""
    return [self]

  def select(self, keep: Callable[[str], bool]) -> Corpus:
    """The corpus of the documents whose name `keep` accepts, in the same order."""
    return _Selected(self, keep)


class _Selected(Corpus):

  def __init__(self, corpus: Corpus, keep: Callable[[str], bool]):
    self.spec = corpus.spec
    self._corpus = corpus
    self._keep = keep

  def documents(self) -> Iterator[Document]:
    return (d for d in self._corpus.documents() if self._keep(d.name))

  def fingerprint(self) -> str:
    raise NotImplementedError('a selection of a corpus has no fingerprint of its own')


def _is_empty(text: str) -> bool:
  return not text.strip()


def _runs(items, parts: int) -> list:
  """`items` (a list or a range) cut into about `parts` contiguous runs, in order."""
  size = max(1, -(-len(items) // max(1, parts)))
  return [items[i:i + size] for i in range(0, len(items), size)]


def _example_documents(corpus: Corpus, field: str,
                       examples: Iterator[tuple[str, str | bytes]]) -> Iterator[Document]:
  """The documents of a dataset's (name, value of `field`) examples: bytes decoded as UTF-8
  (undecodable bytes replaced), empty values skipped, both noted in `corpus.odd` and
  reported by the corpus's policy (`Corpus.report`)."""
  skipped, replaced = [], []
  corpus.odd = {f'example(s) with an empty {field!r}, skipped': skipped,
                f'example(s) not UTF-8 in {field!r}, undecodable bytes replaced': replaced}
  for name, value in examples:
    if isinstance(value, bytes):
      try:
        value = value.decode('utf-8')
      except UnicodeDecodeError:
        value = value.decode('utf-8', errors='replace')
        replaced.append(name)
    if _is_empty(value):
      skipped.append(name)
    else:
      yield Document(name, value)
  if corpus.report:
    report_odd(corpus.spec, corpus.odd)


class FilesCorpus(Corpus):
  """Files under a root directory, one document each, named by their relative posix path."""

  def __init__(self, spec: str, root: pathlib.Path, names: list[str]):
    self.spec = spec
    self.root = root
    self.names = names  # sorted relative posix paths

  def _read(self, name: str) -> bytes:
    path = self.root / name
    try:
      return path.read_bytes()
    except FileNotFoundError:
      raise UserError(f'data.corpus={self.spec!r}: {str(path)!r} vanished after the glob '
                      f'matched it') from None
    except OSError as e:
      raise UserError(f'data.corpus={self.spec!r}: {str(path)!r} cannot be read '
                      f'({e.strerror or e})') from None

  def documents(self) -> Iterator[Document]:
    odd = self.odd = {'file(s) binary (a NUL byte), skipped': [],
                      'file(s) not UTF-8, undecodable bytes replaced': [],
                      'file(s) empty, skipped': []}
    for name in self.names:
      data = self._read(name)
      if b'\0' in data:
        odd['file(s) binary (a NUL byte), skipped'].append(name)
        continue
      try:
        text = data.decode('utf-8')
      except UnicodeDecodeError:
        text = data.decode('utf-8', errors='replace')
        odd['file(s) not UTF-8, undecodable bytes replaced'].append(name)
      if _is_empty(text):
        odd['file(s) empty, skipped'].append(name)
        continue
      yield Document(name, text)
    if self.report:
      report_odd(self.spec, odd)

  def fingerprint(self) -> str:
    # Raw bytes rather than decoded text: the documents are a function of the bytes, and
    # hashing 12 MB of stdlib this way takes a few tens of milliseconds.
    h = hashlib.sha256(b'dlmjax-files-v1\0')
    for name in self.names:
      data = self._read(name)
      h.update(f'{name}\0{len(data)}\0'.encode())
      h.update(data)
    return h.hexdigest()

  def size_hint(self) -> int:
    return len(self.names)

  def stat_fingerprint(self) -> str:
    h = hashlib.sha256(b'dlmjax-files-stat-v1\0')
    for name in self.names:
      st = (self.root / name).stat()
      h.update(f'{name}\0{st.st_size}\0{st.st_mtime_ns}\0'.encode())
    return h.hexdigest()

  def split(self, parts: int) -> list[FilesCorpus]:
    return [FilesCorpus(self.spec, self.root, names) for names in _runs(self.names, parts)]

  def select(self, keep: Callable[[str], bool]) -> FilesCorpus:
    return FilesCorpus(self.spec, self.root, [n for n in self.names if keep(n)])


def _stdlib_corpus() -> FilesCorpus:
  root = pathlib.Path(sysconfig.get_paths()['stdlib'])
  names = []
  for dirpath, dirnames, filenames in os.walk(root):
    # Pruning in place keeps os.walk out of site-packages, which may be large.
    dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]
    rel = pathlib.Path(dirpath).relative_to(root)
    names += [(rel / f).as_posix() for f in filenames if f.endswith('.py')]
  if not names:
    raise UserError(f'data.corpus=stdlib: no .py files found under {str(root)!r}')
  return FilesCorpus('stdlib', root, sorted(names))


def _glob_root(pattern: str) -> pathlib.Path:
  """The directory a glob is relative to: its longest leading part without wildcards."""
  parts = pathlib.Path(pattern).parts
  fixed = []
  for part in parts[:-1]:
    if glob.has_magic(part):
      break
    fixed.append(part)
  return pathlib.Path(*fixed) if fixed else pathlib.Path('.')


def _glob_files(spec: str, pattern: str) -> tuple[pathlib.Path, list[str]]:
  """The glob's root and the files it matches, sorted, as posix paths relative to the root."""
  pattern = os.path.expanduser(pattern)
  root = _glob_root(pattern)
  matches = [pathlib.Path(p) for p in glob.glob(pattern, recursive=True)]
  names = sorted({p.relative_to(root).as_posix() for p in matches if p.is_file()})
  if not names:
    raise UserError(f'data.corpus={spec!r}: the glob {pattern!r} matches no files')
  return root, names


def _files_corpus(spec: str, pattern: str) -> FilesCorpus:
  if not pattern:
    raise UserError(f'data.corpus={spec!r}: give a glob after files:, e.g. files:docs/**/*.md')
  return FilesCorpus(spec, *_glob_files(spec, pattern))


class JsonlCorpus(Corpus):
  """One document per line of a JSON-lines file: the string at `field`; named `FILE:LINENO`."""

  def __init__(self, spec: str, path: pathlib.Path, field: str):
    self.spec = spec
    self.path = path
    self.field = field

  def documents(self) -> Iterator[Document]:
    with open(self.path, 'rb') as f:
      for lineno, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        where = f'{str(self.path)!r} line {lineno}'
        try:
          record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise UserError(f'data.corpus={self.spec!r}: {where} is not valid JSON ({e})') from None
        if not isinstance(record, dict) or self.field not in record:
          raise UserError(f'data.corpus={self.spec!r}: {where} has no field {self.field!r}')
        text = record[self.field]
        if not isinstance(text, str):
          raise UserError(f'data.corpus={self.spec!r}: {where} field {self.field!r} is '
                          f'{type(text).__name__}, not a string')
        if not _is_empty(text):
          # The base name, not the path: moving the file keeps the validation split.
          yield Document(f'{self.path.name}:{lineno}', text)

  def fingerprint(self) -> str:
    h = hashlib.sha256(b'dlmjax-jsonl-v1\0')
    h.update(f'{self.path.name}\0{self.field}\0'.encode())
    with open(self.path, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        h.update(block)
    return h.hexdigest()

  def size_hint(self) -> int:
    with open(self.path, 'rb') as f:
      return sum(block.count(b'\n') for block in iter(lambda: f.read(1 << 20), b'')) + 1


def _jsonl_corpus(spec: str, rest: str) -> JsonlCorpus:
  path, sep, field = rest.rpartition(':')
  if not sep or not path or not field:
    raise UserError(f'data.corpus={spec!r}: expected jsonl:PATH:FIELD')
  p = pathlib.Path(os.path.expanduser(path))
  if not p.is_file():
    raise UserError(f'data.corpus={spec!r}: the file {path!r} does not exist')
  return JsonlCorpus(spec, p, field)


class ParquetCorpus(Corpus):
  """One document per row of parquet files (pyarrow): the string column `field`, named
  `FILE:ROW` with FILE relative to the glob's root and ROW counted from 0. Null and empty
  values are skipped and counted in one line on stderr. Cut by row groups for a pipeline."""

  def __init__(self, spec: str, root: pathlib.Path, names: list[str], field: str,
               units: list[tuple[str, int]] | None = None):
    self.spec = spec
    self.root = root
    self.names = names  # sorted relative posix paths
    self.field = field
    self._units = units  # (file, row group) pairs; None: all of them

  def _file(self, name: str):
    pq = _pyarrow_parquet(self.spec)
    f = pq.ParquetFile(self.root / name)
    schema = f.schema_arrow
    if self.field not in schema.names:
      raise UserError(f'data.corpus={self.spec!r}: {name!r} has no column {self.field!r} '
                      f'(columns: {", ".join(schema.names)})')
    kind = schema.field(self.field).type
    if str(kind) not in ('string', 'large_string'):
      raise UserError(f'data.corpus={self.spec!r}: column {self.field!r} of {name!r} is '
                      f'{kind}, not a string')
    return f

  def units(self) -> list[tuple[str, int]]:
    if self._units is None:
      self._units = [(name, g) for name in self.names
                     for g in range(self._file(name).metadata.num_row_groups)]
    return self._units

  def documents(self) -> Iterator[Document]:
    skipped = []
    self.odd = {f'row(s) with a null or empty {self.field!r}, skipped': skipped}
    for name, group in self.units():
      f = self._file(name)
      row = sum(f.metadata.row_group(g).num_rows for g in range(group))
      for text in f.read_row_group(group, columns=[self.field]).column(0).to_pylist():
        if text is None or _is_empty(text):
          skipped.append(f'{name}:{row}')
        else:
          yield Document(f'{name}:{row}', text)
        row += 1
    if self.report:
      report_odd(self.spec, self.odd)

  def fingerprint(self) -> str:
    h = hashlib.sha256(f'dlmjax-parquet-v1\0{self.field}\0'.encode())
    for name in self.names:
      h.update(f'{name}\0'.encode())
      with open(self.root / name, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
          h.update(block)
    return h.hexdigest()

  def stat_fingerprint(self) -> str:
    h = hashlib.sha256(f'dlmjax-parquet-stat-v1\0{self.field}\0'.encode())
    for name in self.names:
      st = (self.root / name).stat()
      h.update(f'{name}\0{st.st_size}\0{st.st_mtime_ns}\0'.encode())
    return h.hexdigest()

  def size_hint(self) -> int:
    return sum(self._file(name).metadata.num_rows for name in self.names)

  def split(self, parts: int) -> list[ParquetCorpus]:
    return [ParquetCorpus(self.spec, self.root, sorted({n for n, _ in run}), self.field, run)
            for run in _runs(self.units(), parts)]


def _optional(spec: str, module: str, what: str, extra: str):
  """`module`, imported, or a UserError naming the extra that installs it."""
  import importlib

  try:
    return importlib.import_module(module)
  except ImportError:
    raise UserError(f"data.corpus={spec!r}: {what} needs {module.split('.')[0]}: pip install "
                    f"-e '.[{extra}]'") from None


def _pyarrow_parquet(spec: str):
  return _optional(spec, 'pyarrow.parquet', 'reading parquet', 'beam')


def _parquet_corpus(spec: str, rest: str) -> ParquetCorpus:
  pattern, sep, field = rest.rpartition(':')
  if not sep or not pattern or not field:
    raise UserError(f'data.corpus={spec!r}: expected parquet:GLOB:FIELD')
  return ParquetCorpus(spec, *_glob_files(spec, pattern), field)


class TfdsCorpus(Corpus):
  """One document per example of a prepared TFDS dataset in ArrayRecord format, read by
  random access through `tfds.data_source` (tensorflow-datasets without TensorFlow): the text
  feature `field` of split `split`, named `NAME/SPLIT:INDEX`. Cut by index ranges.

  The dataset is the directory `download_and_prepare` wrote (DATA_DIR/NAME[/CONFIG]/VERSION,
  holding dataset_info.json); a prepared version is immutable, so the fingerprint is its
  dataset_info.json with the names and sizes of its files.
  """

  _BLOCK = 1024  # examples read per random-access call

  def __init__(self, spec: str, directory: pathlib.Path, split: str, field: str,
               start: int = 0, stop: int | None = None):
    self.spec = spec
    self.directory = directory
    self.split_name = split
    self.field = field
    self.start, self.stop = start, stop
    self._source = None

  def __getstate__(self):
    return {**self.__dict__, '_source': None}  # picklable for a pipeline's workers

  def source(self):
    if self._source is None:
      tfds = _tfds(self.spec)
      try:
        builder = tfds.builder_from_directory(str(self.directory))
      except Exception as e:  # noqa: BLE001 - tfds raises many kinds for a bad directory
        raise UserError(f'data.corpus={self.spec!r}: {str(self.directory)!r} is not a prepared '
                        f'TFDS dataset ({type(e).__name__}: {e})') from None
      splits = sorted(builder.info.splits)
      if self.split_name not in splits:
        raise UserError(f'data.corpus={self.spec!r}: the dataset has no split '
                        f'{self.split_name!r} (splits: {", ".join(splits)})')
      features = builder.info.features
      if self.field not in features:
        raise UserError(f'data.corpus={self.spec!r}: the dataset has no feature {self.field!r} '
                        f'(features: {", ".join(sorted(features))})')
      if type(features[self.field]).__name__ != 'Text':
        raise UserError(f'data.corpus={self.spec!r}: feature {self.field!r} is '
                        f'{type(features[self.field]).__name__}, not Text')
      try:
        self._source = builder.as_data_source(split=self.split_name)
      except Exception as e:  # noqa: BLE001
        raise UserError(f'data.corpus={self.spec!r}: split {self.split_name!r} cannot be read '
                        f'by random access ({type(e).__name__}: {e}); prepare the dataset '
                        f"with file_format='array_record'") from None
      self.name = builder.name
    return self._source

  def _range(self) -> range:
    n = len(self.source())
    return range(self.start, n if self.stop is None else min(self.stop, n))

  def documents(self) -> Iterator[Document]:
    source, rows = self.source(), self._range()

    def examples():
      for lo in range(rows.start, rows.stop, self._BLOCK):
        block = range(lo, min(lo + self._BLOCK, rows.stop))
        for i, example in zip(block, source.__getitems__(list(block))):
          yield f'{self.name}/{self.split_name}:{i}', example[self.field]
    return _example_documents(self, self.field, examples())

  def fingerprint(self) -> str:
    h = hashlib.sha256(f'dlmjax-tfds-v1\0{self.split_name}\0{self.field}\0'.encode())
    info = self.directory / 'dataset_info.json'
    if not info.is_file():
      raise UserError(f'data.corpus={self.spec!r}: {str(self.directory)!r} is not a prepared '
                      f'TFDS dataset (no dataset_info.json)')
    h.update(info.read_bytes())
    for f in sorted(self.directory.iterdir()):
      h.update(f'{f.name}\0{f.stat().st_size}\0'.encode())
    return h.hexdigest()

  def size_hint(self) -> int:
    return len(self._range())

  def split(self, parts: int) -> list[TfdsCorpus]:
    return [TfdsCorpus(self.spec, self.directory, self.split_name, self.field, run.start,
                       run.stop) for run in _runs(self._range(), parts)]


def _tfds(spec: str):
  return _optional(spec, 'tensorflow_datasets', 'reading a TFDS dataset', 'tfds')


def _tfds_corpus(spec: str, rest: str) -> TfdsCorpus:
  parts = rest.rsplit(':', 2)
  if len(parts) != 3 or not all(parts):
    raise UserError(f'data.corpus={spec!r}: expected tfds:DIR:SPLIT:FIELD (DIR: the prepared '
                    f'dataset, e.g. ~/tensorflow_datasets/c4/en/3.0.1)')
  directory, split, field = parts
  path = pathlib.Path(os.path.expanduser(directory))
  if not path.is_dir():
    raise UserError(f'data.corpus={spec!r}: the directory {directory!r} does not exist')
  return TfdsCorpus(spec, path, split, field)


class SeqioCorpus(Corpus):
  """One document per example of a registered seqio Task (seqio, the [seqio] extra): the
  Task's dataset for split `split` through all its preprocessors, unshuffled, one epoch;
  the feature `feature` as text, named `TASK/SPLIT:INDEX`. A feature the Task tokenized is
  turned back into text by the Task's own vocabulary (`Feature.vocabulary.decode`), so that
  every source of a study is tokenized by one tokenizer, `data.tokenizer`, and a unique
  budget counts the same tokens whatever the source. `module` is imported first (it
  registers the Task, as T5X's MIXTURE_OR_TASK_MODULE does). A Mixture opens as the
  weighted mixture of its Tasks at its rates (`open_corpus`). The fingerprint reads every
  document (a seqio source has no content hash of its own)."""

  def __init__(self, spec: str, module: str, path: str | None, task: str, split: str,
               feature: str):
    self.spec = spec
    self.module, self.path, self.task, self.split_name, self.feature = (
        module, path, task, split, feature)

  def provider(self):
    return _seqio_provider(self.spec, self.module, self.path, self.task)

  def documents(self) -> Iterator[Document]:
    task = self.provider()
    if self.split_name not in task.splits:
      raise UserError(f'data.corpus={self.spec!r}: Task {self.task!r} has no split '
                      f'{self.split_name!r} (splits: {", ".join(sorted(task.splits))})')
    vocab = (task.output_features[self.feature].vocabulary
             if self.feature in task.output_features else None)
    dataset = task.get_dataset(sequence_length=None, split=self.split_name, shuffle=False,
                               num_epochs=1, use_cached=False)

    def examples():
      for i, example in enumerate(dataset.as_numpy_iterator()):
        if self.feature not in example:
          raise UserError(f'data.corpus={self.spec!r}: Task {self.task!r} gives no feature '
                          f'{self.feature!r} (features: {", ".join(sorted(example))})')
        value = example[self.feature]
        if getattr(value, 'dtype', None) is not None and value.dtype.kind in 'iu' and vocab:
          value = vocab.decode(value.tolist())  # ids of the Task's vocabulary, as text
        elif not isinstance(value, bytes):
          raise UserError(f'data.corpus={self.spec!r}: feature {self.feature!r} of Task '
                          f'{self.task!r} is neither text nor token ids of its vocabulary')
        yield f'{self.task}/{self.split_name}:{i}', value
    return _example_documents(self, self.feature, examples())

  def fingerprint(self) -> str:
    h = hashlib.sha256(b'dlmjax-seqio-v1\0')
    report, self.report = self.report, False
    try:
      for d in self.documents():
        h.update(f'{d.name}\0{len(d.text)}\0'.encode())
        h.update(d.text.encode('utf-8'))
    finally:
      self.report = report
    return h.hexdigest()


def _seqio_provider(spec: str, module: str, path: str | None, name: str):
  """The registered seqio Task or Mixture `name`, `module` imported first (from `path`, the
  directory it was found under when the spec was opened, for a pipeline's workers)."""
  import importlib

  # TensorFlow, which seqio runs on, must neither log at length nor take the accelerators
  # JAX trains on.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  seqio = _optional(spec, 'seqio', 'a seqio source', 'seqio')
  _optional(spec, 'tensorflow', 'a seqio source', 'seqio').config.set_visible_devices([], 'GPU')
  if path and path not in sys.path:
    sys.path.append(path)
  try:
    importlib.import_module(module)
  except ImportError as e:
    raise UserError(f'data.corpus={spec!r}: cannot import the module {module!r} that '
                    f'registers the Task ({e})') from None
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    raise UserError(f'data.corpus={spec!r}: no seqio Task or Mixture {name!r} is registered '
                    f'by {module!r}') from None


def _seqio_parts(spec: str) -> tuple[str, str | None, str, str, str]:
  import importlib.util

  parts = spec.removeprefix('seqio:').split(':')
  if len(parts) != 4 or not all(parts):
    raise UserError(f'data.corpus={spec!r}: expected seqio:MODULE:TASK:SPLIT:FEATURE (MODULE '
                    f'registers the Task or Mixture)')
  module = parts[0]
  try:
    found = importlib.util.find_spec(module.split('.')[0])
  except (ImportError, ValueError):
    found = None
  path = None
  if found is not None and found.origin:
    # The directory holding the top-level module or package, for workers whose sys.path
    # lacks it (e.g. the current directory of the command).
    origin = pathlib.Path(found.origin)
    path = str(origin.parent.parent if origin.name == '__init__.py' else origin.parent)
  return module, path, *parts[1:]


def _seqio_sources(spec: str) -> list[tuple[float, str]] | None:
  """A seqio Mixture's [(rate share, Task spec)], or None for a Task."""
  module, path, name, split, feature = _seqio_parts(spec)
  provider = _seqio_provider(spec, module, path, name)
  tasks = getattr(provider, 'tasks', None)
  if not hasattr(provider, 'get_rate') or not tasks:
    return None
  rates = [float(provider.get_rate(t)) for t in tasks]
  total = sum(rates)
  return [(r / total, f'seqio:{module}:{t.name}:{split}:{feature}')
          for r, t in zip(rates, tasks) if r > 0]


def _seqio_corpus(spec: str) -> Corpus:
  module, path, name, split, feature = _seqio_parts(spec)
  sources = _seqio_sources(spec)
  if sources is None:
    return SeqioCorpus(spec, module, path, name, split, feature)
  return MixtureCorpus(spec, [(w, SeqioCorpus(s, module, path, *s.split(':')[2:]))
                              for w, s in sources])


class _Labelled(Corpus):
  """A mixture's source (or a piece of it): its documents renamed LABEL/NAME."""

  def __init__(self, corpus: Corpus, label: str, spec: str):
    self.spec = spec
    self.corpus = corpus
    self.label = label

  def documents(self) -> Iterator[Document]:
    self.corpus.report = self.report
    for d in self.corpus.documents():
      yield Document(f'{self.label}/{d.name}', d.text)
    self.odd = self.corpus.odd

  def fingerprint(self) -> str:
    return self.corpus.fingerprint()

  def stat_fingerprint(self) -> str:
    return self.corpus.stat_fingerprint()

  def size_hint(self) -> int | None:
    return self.corpus.size_hint()

  def split(self, parts: int) -> list[Corpus]:
    return [_Labelled(p, self.label, self.spec) for p in self.corpus.split(parts)]


def mixture_label(spec: str) -> str:
  """The name prefix of a mixture source's documents: a hash of its spec, so that reordering
  the sources or changing their weights keeps every document's name and validation flag."""
  return 'm' + hashlib.sha1(spec.encode('utf-8')).hexdigest()[:8]


def parse_mixture(spec: str) -> list[tuple[float, str]]:
  """[(weight, source spec)] of `mix:W*SPEC|W*SPEC...`, the weights normalised to sum 1.

  Raises UserError naming the part that is malformed.
  """
  parts = spec.removeprefix('mix:').split('|')
  out = []
  for part in parts:
    weight, sep, source = part.partition('*')
    try:
      w = float(weight)
    except ValueError:
      w = -1.0
    if not sep or not source or not w > 0 or not math.isfinite(w):
      raise UserError(f'data.corpus={spec!r}: {part!r} is not WEIGHT*SPEC with a positive '
                      f'weight (a mixture is mix:W*SPEC|W*SPEC...)')
    if source.startswith(('mix:', 'store:')):
      raise UserError(f'data.corpus={spec!r}: a mixture\'s source cannot be {source!r} (a '
                      f'mixture of text sources is tokenized once; mix stores by mixing their '
                      f'sources)')
    out.append((w, source))
  if len(out) < 2:
    raise UserError(f'data.corpus={spec!r}: a mixture needs two or more sources, '
                    f'mix:W*SPEC|W*SPEC...')
  sources = [s for _, s in out]
  if len(set(sources)) != len(sources):
    raise UserError(f'data.corpus={spec!r}: a source is listed twice')
  total = sum(w for w, _ in out)
  return [(w / total, s) for w, s in out]


class MixtureCorpus(Corpus):
  """The documents of two or more sources, one source after another, each document renamed
  LABEL/NAME (`mixture_label`). The weights do not change the documents (so one token store
  serves every weighting); they set each source's share of every unique budget
  (`dlmjax/data/budget.py`)."""

  def __init__(self, spec: str, sources: list[tuple[float, Corpus]]):
    self.spec = spec
    self.weights = [w for w, _ in sources]
    self.sources = [_Labelled(c, mixture_label(c.spec), spec) for _, c in sources]

  def documents(self) -> Iterator[Document]:
    self.odd = {}
    for source in self.sources:
      source.report = False
      yield from source.documents()
      for kind, names in source.odd.items():
        self.odd.setdefault(kind, []).extend(names)
    if self.report:
      report_odd(self.spec, self.odd)

  def fingerprint(self) -> str:
    h = hashlib.sha256(b'dlmjax-mix-v1\0')
    for s in self.sources:
      h.update(f'{s.label}\0{s.fingerprint()}\0'.encode())
    return h.hexdigest()

  def stat_fingerprint(self) -> str:
    h = hashlib.sha256(b'dlmjax-mix-stat-v1\0')
    for s in self.sources:
      h.update(f'{s.label}\0{s.stat_fingerprint()}\0'.encode())
    return h.hexdigest()

  def size_hint(self) -> int | None:
    hints = [s.size_hint() for s in self.sources]
    return None if None in hints else sum(hints)

  def split(self, parts: int) -> list[Corpus]:
    each = max(1, -(-parts // len(self.sources)))
    return [piece for s in self.sources for piece in s.split(each)]


def _mixture_corpus(spec: str) -> MixtureCorpus:
  sources = [(w, open_corpus(s)) for w, s in parse_mixture(spec)]
  for _, c in sources:
    if isinstance(c, MixtureCorpus):
      raise UserError(f'data.corpus={spec!r}: {c.spec!r} is itself a mixture; list its tasks '
                      f'in the mix instead')
  return MixtureCorpus(spec, sources)


def mixture_sources(spec: str) -> list[tuple[float, str]] | None:
  """[(weight, source spec)] of a mixture (`mix:` or a seqio Mixture), the weights summing
  to 1; None for a single source."""
  if spec.startswith('mix:'):
    return parse_mixture(spec)
  if spec.startswith('seqio:'):
    return _seqio_sources(spec)
  return None


def mixture_weights(spec: str) -> dict[str, float] | None:
  """{document-name label: weight} of a mixture spec, or None for a single source."""
  sources = mixture_sources(spec)
  return None if sources is None else {mixture_label(s): w for w, s in sources}


def open_corpus(spec: str) -> Corpus:
  """The corpus named by `spec`: `stdlib`, `files:GLOB`, `jsonl:PATH:FIELD`,
  `parquet:GLOB:FIELD`, `tfds:DIR:SPLIT:FIELD`, `seqio:MODULE:TASK:SPLIT:FEATURE` (a Task or
  Mixture) or a weighted mixture of these, `mix:W*SPEC|W*SPEC...`.

  Raises UserError naming the spec when it is malformed or matches nothing.
  """
  if spec == 'stdlib':
    return _stdlib_corpus()
  kind, sep, rest = spec.partition(':')
  if sep and kind == 'files':
    return _files_corpus(spec, rest)
  if sep and kind == 'jsonl':
    return _jsonl_corpus(spec, rest)
  if sep and kind == 'parquet':
    return _parquet_corpus(spec, rest)
  if sep and kind == 'tfds':
    return _tfds_corpus(spec, rest)
  if sep and kind == 'seqio':
    return _seqio_corpus(spec)
  if sep and kind == 'mix':
    return _mixture_corpus(spec)
  raise UserError(f'data.corpus={spec!r} is not stdlib, files:GLOB, jsonl:PATH:FIELD, '
                  f'parquet:GLOB:FIELD, tfds:DIR:SPLIT:FIELD, seqio:MODULE:TASK:SPLIT:FEATURE '
                  f'or mix:W*SPEC|W*SPEC...')
