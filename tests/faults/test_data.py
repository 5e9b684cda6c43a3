"""Bad data files under the policy of dlmjax/data/corpus.py: binary files skipped, invalid
UTF-8 replaced, empty files skipped, each reported by name; a corpus with nothing left, or a
file that vanishes, stops with one line naming it."""

import pathlib
import subprocess
import sys
import sysconfig

import pytest

from dlmjax import config as config_lib
from dlmjax import train
from dlmjax.data.corpus import open_corpus
from dlmjax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
       'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=20000', 'data.epochs=1',
       'eval.val_tokens=1024', 'eval.num_evals=1', 'eval.batch_size=8', 'train.progress=false',
       'eval.tasks=', 'objective=ar', 'data.val_fraction=0.2']


@pytest.fixture
def messy(tmp_path) -> pathlib.Path:
  """Real text (standard-library modules as .txt) with every kind of bad file among it."""
  d = tmp_path / 'corpus'
  d.mkdir()
  stdlib = pathlib.Path(sysconfig.get_paths()['stdlib'])
  for name in ('argparse.py', 'typing.py', 'inspect.py', 'dataclasses.py', 'pathlib.py'):
    (d / f'{name}.txt').write_bytes((stdlib / name).read_bytes())
  (d / 'empty.txt').write_bytes(b'')
  (d / 'blank.txt').write_bytes(b' \n\t\n')
  (d / 'image.txt').write_bytes(b'\x89PNG\r\n\x1a\n\0\0\0\rIHDR' + bytes(range(256)))
  (d / 'latin1.txt').write_bytes('caf\xe9 cr\xe8me br\xfbl\xe9e\n'.encode('latin-1') * 50)
  return d


def test_bad_files_are_skipped_or_repaired_and_named_and_the_run_trains(messy, tmp_path, capfd,
                                                                        counts):
  spec = f'files:{messy}/*.txt'
  docs = {d.name: d.text for d in open_corpus(spec).documents()}
  err = capfd.readouterr().err
  assert 'image.txt' not in docs and 'empty.txt' not in docs and 'blank.txt' not in docs
  assert docs['latin1.txt'].startswith('caf\ufffd cr\ufffdme')
  assert f'data.corpus={spec}: 1 file(s) binary (a NUL byte), skipped: image.txt' in err
  assert f'data.corpus={spec}: 1 file(s) not UTF-8, undecodable bytes replaced: latin1.txt' in err
  assert f'data.corpus={spec}: 2 file(s) empty, skipped: blank.txt, empty.txt' in err
  cfg = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                               [*RUN, f'data.corpus={spec}', f'run_dir={tmp_path / "run"}'])
  result = train.run(cfg)
  assert result['steps'] > 0
  counts['data_bad_files_handled'] += 4


@pytest.mark.parametrize('make', ['all-empty', 'empty-jsonl', 'bad-jsonl', 'no-match'])
def test_a_corpus_with_nothing_to_train_on_exits_2_in_one_line(tmp_path, make, counts):
  if make == 'all-empty':
    (tmp_path / 'a.txt').write_text('')
    (tmp_path / 'b.txt').write_text('\n\n')
    spec, expect = f'files:{tmp_path}/*.txt', 'holds no non-empty documents'
  elif make == 'empty-jsonl':
    (tmp_path / 'c.jsonl').write_text('')
    spec, expect = f'jsonl:{tmp_path}/c.jsonl:text', 'holds no non-empty documents'
  elif make == 'bad-jsonl':
    (tmp_path / 'c.jsonl').write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    spec, expect = f'jsonl:{tmp_path}/c.jsonl:text', 'line 2 is not valid JSON'
  else:
    spec, expect = f'files:{tmp_path}/none/*.txt', 'matches no files'
  proc = subprocess.run([sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', *RUN,
                         f'data.corpus={spec}', f'run_dir={tmp_path / "run"}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and expect in errors[0], proc.stderr
  assert 'Traceback' not in proc.stderr
  counts['data_unusable_corpora_refused'] += 1


def test_a_file_that_vanishes_after_the_glob_is_named(messy, counts):
  corpus = open_corpus(f'files:{messy}/*.txt')
  (messy / 'typing.py.txt').unlink()
  with pytest.raises(UserError, match=r"typing\.py\.txt' vanished after the glob matched it"):
    list(corpus.documents())
  with pytest.raises(UserError, match='vanished'):
    corpus.fingerprint()
  counts['data_vanished_files_named'] += 1
