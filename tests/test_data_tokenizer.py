"""Tokenizers: shared special ids, round trips, token bytes, BPE trained on training text only."""

import numpy as np
import pytest

from dlmjax.config import DataConfig
from dlmjax.data import tokenizer as tk
from dlmjax.data.store import is_tokenizer_name, is_val_name, prepare_data
from dlmjax.errors import UserError

TEXTS = ['def f(x):\n    return x + 1\n', 'héllo wörld ✓ 你好', 'tabs\tand  spaces\r\n', '']
WORDS = ['import', 'return', 'lambda', 'yield', 'class', 'value', 'self', 'print', 'for', 'in']


def _training_texts(n=200, seed=0):
  rng = np.random.default_rng(seed)
  return [' '.join(rng.choice(WORDS, size=int(rng.integers(5, 40)))) for _ in range(n)]


@pytest.fixture(scope='module')
def bpe():
  return tk.BPETokenizer.train(iter(_training_texts()), vocab_size=300)


def test_special_ids_are_fixed():
  assert (tk.PAD_ID, tk.BOS_ID, tk.EOS_ID, tk.MASK_ID, tk.NUM_SPECIAL) == (0, 1, 2, 3, 4)
  byte = tk.ByteTokenizer()
  assert (byte.pad_id, byte.bos_id, byte.eos_id, byte.mask_id) == (0, 1, 2, 3)


def test_byte_tokenizer_maps_byte_b_to_id_b_plus_4_and_round_trips():
  byte = tk.ByteTokenizer()
  assert byte.vocab_size == 260
  assert byte.encode('A\x00') == [ord('A') + 4, 4]
  for text in TEXTS:
    ids = byte.encode(text)
    assert ids == [b + 4 for b in text.encode('utf-8')]
    assert byte.decode(ids) == text
  assert byte.encode_batch(TEXTS) == [byte.encode(t) for t in TEXTS]


def test_byte_token_bytes_is_one_per_byte_and_zero_for_specials():
  tb = tk.ByteTokenizer().token_bytes()
  assert tb.dtype == np.int32 and tb.shape == (260,)
  assert tb[:4].tolist() == [0, 0, 0, 0] and (tb[4:] == 1).all()


def test_decode_skips_pad_bos_eos_and_shows_mask_and_replaces_invalid_utf8():
  byte = tk.ByteTokenizer()
  ids = [tk.BOS_ID] + byte.encode('ab') + [tk.MASK_ID] + byte.encode('c') + [tk.EOS_ID, 0, 0]
  assert byte.decode(ids) == 'ab▒c'
  assert byte.decode(np.array([0xff + 4, ord('x') + 4])) == '\ufffdx'


def test_bpe_puts_specials_at_ids_0_to_3_and_has_the_asked_vocab(bpe):
  assert bpe.vocab_size == 300
  assert [bpe._hf.id_to_token(i) for i in range(4)] == list(tk.SPECIAL_TOKENS)


def test_bpe_round_trips_any_text_and_merges_frequent_words(bpe):
  for text in TEXTS + ['∀x∈ℝ emoji 🙂 \x00\x7f']:
    assert bpe.decode(bpe.encode(text)) == text
  assert len(bpe.encode('return')) == 1
  assert bpe.encode_batch(TEXTS) == [bpe.encode(t) for t in TEXTS]


def test_bpe_encodes_special_token_text_as_plain_text(bpe):
  ids = bpe.encode('a <|eos|> b <|mask|>')
  assert min(ids) >= tk.NUM_SPECIAL
  assert bpe.decode(ids) == 'a <|eos|> b <|mask|>'


def test_bpe_token_bytes_match_the_bytes_each_id_decodes_to(bpe):
  tb = bpe.token_bytes()
  assert tb.shape == (300,) and tb[:4].tolist() == [0, 0, 0, 0]
  for i in range(4, 300):
    assert tb[i] == len(bpe.id_bytes(np.array([i])))
  text = 'lambda self: yield value'
  assert tb[bpe.encode(text)].sum() == len(text.encode('utf-8'))


def test_save_and_load_give_the_same_tokenizer(tmp_path, bpe):
  for tok in (tk.ByteTokenizer(), bpe):
    tok.save(tmp_path / tok.kind)
    loaded = tk.load_tokenizer(tmp_path / tok.kind)
    assert type(loaded) is type(tok) and loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode(TEXTS[1]) == tok.encode(TEXTS[1])
  assert loaded.encode('a <|eos|>') == bpe.encode('a <|eos|>')  # specials stay text


def test_a_pickled_tokenizer_is_the_same_tokenizer(bpe):
  # What a pipeline's workers get with their DoFn: special-token text must stay text, which
  # the HF tokenizer's own pickling would forget.
  import pickle

  for tok in (tk.ByteTokenizer(), bpe):
    copy = pickle.loads(pickle.dumps(tok))
    assert type(copy) is type(tok) and copy.fingerprint() == tok.fingerprint()
    assert copy.encode('a <|eos|> b <|mask|>') == tok.encode('a <|eos|> b <|mask|>')


def test_load_tokenizer_from_a_directory_without_one_names_the_file(tmp_path):
  with pytest.raises(UserError, match='tokenizer.json'):
    tk.load_tokenizer(tmp_path)


def test_bpe_is_trained_on_its_tokenizer_split_only(tmp_path):
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  names = [f'doc{i:03d}.txt' for i in range(60)]
  val_names = [n for n in names if is_val_name(n, 0.25)]
  tok_names = [n for n in names if is_tokenizer_name(n, 0.25, 0.3)]
  assert 0 < len(val_names) and 0 < len(tok_names) and len(val_names) + len(tok_names) < 60
  for text, name in zip(_training_texts(len(names)), names):
    # A word repeated in every held-out document and one in every budget document: a BPE
    # that saw validation or budget text would certainly merge them into one token.
    extra = (' zqxvalword' * 50 if name in val_names else
             ' tokword' * 50 if name in tok_names else ' budgetword' * 50)
    (corpus / name).write_text(text + extra)
  cfg = DataConfig(corpus=f'files:{corpus}/*.txt', tokenizer='bpe', bpe_vocab_size=320,
                   val_fraction=0.25, tokenizer_fraction=0.3, cache_dir=str(tmp_path / 'cache'))
  tok, store = prepare_data(cfg)
  assert isinstance(tok, tk.BPETokenizer)
  assert len(tok.encode(' tokword')) == 1
  assert len(tok.encode(' zqxvalword')) > 3
  assert len(tok.encode(' budgetword')) > 3
  # Cached: the second call loads the same tokenizer instead of training again.
  tok2, store2 = prepare_data(cfg)
  assert tok2.fingerprint() == tok.fingerprint() and store2.path == store.path
  assert list((tmp_path / 'cache' / 'tokenizers').iterdir())
  i = store.doc_names.index(val_names[0])
  assert tok.decode(store.doc(i)) == (corpus / val_names[0]).read_text()


def test_build_tokenizer_byte_needs_no_training_text():
  def never():
    raise AssertionError('byte tokenizer asked for training text')
  assert isinstance(tk.build_tokenizer(DataConfig(), never), tk.ByteTokenizer)
