"""Tokenizers: bytes (the default) and a byte-level BPE trained on the training split.

Both reserve the same four special ids, so no other module asks a tokenizer for them:

    PAD_ID = 0, BOS_ID = 1, EOS_ID = 2, MASK_ID = 3

`encode` never adds specials (the token store adds BOS and EOS around each document) and
never turns special-token text such as '<|eos|>' in a document into a special id. `decode`
drops pad/bos/eos and shows the mask as '▒', so a partially unmasked diffusion sample reads
naturally. `token_bytes()` gives the UTF-8 bytes each id stands for (0 for specials); bits
per byte divide by their sum over the scored tokens.

A tokenizer is saved as `tokenizer.json` in a directory (the run directory or the cache):
the HuggingFace file for BPE, a two-key file for bytes. `load_tokenizer(dir)` reads either.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import json
import os
import pathlib
import sys
import tempfile
from typing import Callable, Iterable, Iterator

import numpy as np

from dlmjax.errors import UserError

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
MASK_ID = 3
NUM_SPECIAL = 4
SPECIAL_TOKENS = ('<|pad|>', '<|bos|>', '<|eos|>', '<|mask|>')  # BPE token text of ids 0..3
MASK_GLYPH = '▒'
TOKENIZER_FILE = 'tokenizer.json'

_MASK_GLYPH_BYTES = MASK_GLYPH.encode('utf-8')


class Tokenizer(abc.ABC):
  """Text <-> ids with the shared special ids; see the module docstring."""

  kind: str
  vocab_size: int

  pad_id = property(lambda self: PAD_ID)
  bos_id = property(lambda self: BOS_ID)
  eos_id = property(lambda self: EOS_ID)
  mask_id = property(lambda self: MASK_ID)

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """The ids of `text`, without special tokens."""

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]

  def encode_batch_np(self, texts: list[str]) -> list[np.ndarray]:
    """`encode_batch` as int32 arrays; the token store's fast path (no Python int lists)."""
    return [np.asarray(ids, np.int32) for ids in self.encode_batch(texts)]

  @abc.abstractmethod
  def id_bytes(self, ids: np.ndarray) -> bytes:
    """The bytes that non-special `ids` stand for, concatenated."""

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`: pad/bos/eos dropped, mask shown as '▒', invalid UTF-8 replaced."""
    if not hasattr(ids, '__array__') and not isinstance(ids, (list, tuple)):
      ids = list(ids)  # a generator
    ids_N = np.asarray(ids, np.int64).ravel()
    # Decoding runs between masks separately would break a multi-byte character that a mask
    # interrupts twice; splicing the glyph's bytes into one byte string does not.
    pieces = []
    for i, run in enumerate(np.split(ids_N, np.flatnonzero(ids_N == MASK_ID))):
      if i:
        pieces.append(_MASK_GLYPH_BYTES)
        run = run[1:]
      pieces.append(self.id_bytes(run[run >= NUM_SPECIAL]))
    return b''.join(pieces).decode('utf-8', errors='replace')

  @abc.abstractmethod
  def token_bytes(self) -> np.ndarray:
    """int32 [vocab_size]: UTF-8 bytes each id stands for; 0 for the special ids."""

  @abc.abstractmethod
  def fingerprint(self) -> str:
    """Hex digest that changes iff the id assignment changes."""

  @abc.abstractmethod
  def save(self, directory: str | os.PathLike) -> None:
    """Writes `directory/tokenizer.json` (atomically; the directory is created)."""


def _write_atomic(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
  with os.fdopen(fd, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


class ByteTokenizer(Tokenizer):
  """UTF-8 byte b -> id b + 4; vocabulary 260."""

  kind = 'byte'
  vocab_size = 256 + NUM_SPECIAL

  def encode(self, text: str) -> list[int]:
    return self._encode_np(text).tolist()

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [self._encode_np(t).tolist() for t in texts]

  def encode_batch_np(self, texts: list[str]) -> list[np.ndarray]:
    return [self._encode_np(t) for t in texts]

  @staticmethod
  def _encode_np(text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32) + NUM_SPECIAL

  def id_bytes(self, ids: np.ndarray) -> bytes:
    return (np.asarray(ids) - NUM_SPECIAL).astype(np.uint8).tobytes()

  def token_bytes(self) -> np.ndarray:
    out_V = np.ones(self.vocab_size, np.int32)
    out_V[:NUM_SPECIAL] = 0
    return out_V

  def fingerprint(self) -> str:
    return hashlib.sha256(b'dlmjax-byte-v1').hexdigest()

  def save(self, directory: str | os.PathLike) -> None:
    text = json.dumps({'dlmjax_tokenizer': 'byte', 'vocab_size': self.vocab_size})
    _write_atomic(pathlib.Path(directory) / TOKENIZER_FILE, text + '\n')


@functools.cache
def byte_level_decoder() -> dict[str, int]:
  """GPT-2's byte-level alphabet, inverted: printable stand-in char -> byte value."""
  bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(
      range(ord('®'), ord('ÿ') + 1))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {chr(c): b for b, c in zip(bs, cs)}


class BPETokenizer(Tokenizer):
  """A HuggingFace `tokenizers` byte-level BPE whose ids 0..3 are the special tokens."""

  kind = 'bpe'

  def __init__(self, hf_tokenizer):
    self._hf = hf_tokenizer
    # Special-token text inside a document is data, not a control token.
    self._hf.encode_special_tokens = True
    self.vocab_size = hf_tokenizer.get_vocab_size()
    for i, text in enumerate(SPECIAL_TOKENS):
      if hf_tokenizer.token_to_id(text) != i:
        raise UserError(f'tokenizer has {hf_tokenizer.id_to_token(i)!r} at id {i}, '
                        f'expected {text!r}')
    inverse = byte_level_decoder()
    self._id_bytes = [b''] * self.vocab_size
    for token, i in hf_tokenizer.get_vocab(with_added_tokens=False).items():
      if i >= NUM_SPECIAL:
        self._id_bytes[i] = bytes(inverse[c] for c in token)
    self._token_bytes_V = np.array([len(b) for b in self._id_bytes], np.int32)

  @classmethod
  def train(cls, texts: Iterator[str], vocab_size: int) -> BPETokenizer:
    """Trains a byte-level BPE of `vocab_size` ids (specials included) on `texts`."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        show_progress=sys.stderr.isatty(),
        # Every byte gets an id even if training never saw it, so any text round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer)
    return cls(hf)

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> BPETokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    return cls(HFTokenizer.from_file(str(path)))

  @classmethod
  def from_str(cls, text: str) -> BPETokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    return cls(HFTokenizer.from_str(text))

  def __reduce__(self):
    # Through its JSON and __init__ (as `load_tokenizer` builds it): the HF object's own
    # pickling drops `encode_special_tokens`.
    return BPETokenizer.from_str, (self._hf.to_str(),)

  def encode(self, text: str) -> list[int]:
    return self._hf.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    # encode_batch_fast skips offsets and runs in parallel in Rust.
    return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]

  def id_bytes(self, ids: np.ndarray) -> bytes:
    table = self._id_bytes
    return b''.join(table[i] for i in np.asarray(ids).tolist())

  def token_bytes(self) -> np.ndarray:
    return self._token_bytes_V.copy()

  def fingerprint(self) -> str:
    return hashlib.sha256(self._hf.to_str().encode()).hexdigest()

  def save(self, directory: str | os.PathLike) -> None:
    _write_atomic(pathlib.Path(directory) / TOKENIZER_FILE, self._hf.to_str())


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
  """Reads the tokenizer that `Tokenizer.save(directory)` wrote."""
  path = pathlib.Path(directory) / TOKENIZER_FILE
  if not path.is_file():
    raise UserError(f'no tokenizer file {str(path)!r}')
  try:
    data = json.loads(path.read_text(encoding='utf-8'))
  except json.JSONDecodeError as e:
    raise UserError(f'tokenizer file {str(path)!r} is not valid JSON ({e})') from None
  if data.get('dlmjax_tokenizer') == 'byte':
    return ByteTokenizer()
  return BPETokenizer.from_file(path)


def planned_vocab_size(data_cfg) -> int:
  """The vocabulary a run of `data_cfg` trains with, known without building the tokenizer:
  a sharded store's own (`data.corpus=store:DIR`, from its index, where it can be read; a
  trained BPE may hold fewer ids than data.bpe_vocab_size), else the byte vocabulary or
  data.bpe_vocab_size."""
  if data_cfg.corpus.startswith('store:'):
    from dlmjax.data import shards  # imports this module

    directory = os.path.expanduser(data_cfg.corpus.removeprefix('store:'))
    index = pathlib.Path(directory) / shards.INDEX_FILE
    if '://' not in directory and index.is_file():
      return int(json.loads(index.read_text())['vocab_size'])
  return ByteTokenizer.vocab_size if data_cfg.tokenizer == 'byte' else data_cfg.bpe_vocab_size


def build_tokenizer(data_cfg, train_documents: Callable[[], Iterator[str]]) -> Tokenizer:
  """The tokenizer `data_cfg.tokenizer` names; BPE is trained on `train_documents()` only.

  `train_documents` must yield no validation text and no text of a unique budget (the token
  store passes its tokenizer split), so the tokenizer cannot encode held-out documents better
  than the model could have learned to, nor compress a small budget with text beyond it.
  """
  if data_cfg.tokenizer == 'byte':
    return ByteTokenizer()
  if data_cfg.tokenizer == 'bpe':
    return BPETokenizer.train(train_documents(), data_cfg.bpe_vocab_size)
  raise UserError(f'data.tokenizer={data_cfg.tokenizer!r} is not byte or bpe')
