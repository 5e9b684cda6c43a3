"""Document sources, named by a spec string (`data.corpus`).

    corpus = open_corpus('stdlib')            # the running Python's standard library
    corpus = open_corpus('files:data/**/*.md')  # every file the recursive glob matches
    corpus = open_corpus('jsonl:web.jsonl:text')  # one document per line, field `text`
    corpus = open_corpus('parquet:web/*.parquet:text')  # one document per row, column `text`
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
    size = max(1, -(-len(self.names) // max(1, parts)))
    return [FilesCorpus(self.spec, self.root, self.names[i:i + size])
            for i in range(0, len(self.names), size)]

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
    units = self.units()
    size = max(1, -(-len(units) // max(1, parts)))
    return [ParquetCorpus(self.spec, self.root, sorted({n for n, _ in units[i:i + size]}),
                          self.field, units[i:i + size]) for i in range(0, len(units), size)]


def _pyarrow_parquet(spec: str):
  try:
    import pyarrow.parquet as pq
  except ImportError:
    raise UserError(f"data.corpus={spec!r}: reading parquet needs pyarrow: pip install -e "
                    f"'.[beam]'") from None
  return pq


def _parquet_corpus(spec: str, rest: str) -> ParquetCorpus:
  pattern, sep, field = rest.rpartition(':')
  if not sep or not pattern or not field:
    raise UserError(f'data.corpus={spec!r}: expected parquet:GLOB:FIELD')
  return ParquetCorpus(spec, *_glob_files(spec, pattern), field)


def open_corpus(spec: str) -> Corpus:
  """The corpus named by `spec`: `stdlib`, `files:GLOB`, `jsonl:PATH:FIELD` or
  `parquet:GLOB:FIELD`.

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
  raise UserError(f'data.corpus={spec!r} is not stdlib, files:GLOB, jsonl:PATH:FIELD or '
                  f'parquet:GLOB:FIELD')
