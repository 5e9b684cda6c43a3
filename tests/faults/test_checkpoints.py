"""A damaged checkpoint is detected, set aside with a log line naming it, and the step before
it is used; the resumed run ends with the parameters of an undamaged one."""

import pathlib
import shutil

import pytest

import dlmjax
from dlmjax import config as config_lib
from dlmjax import train
from dlmjax.checkpoint import MANIFEST, CorruptCheckpoint
from dlmjax.errors import UserError
from faults.common import assert_finished_like

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
       'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=20000', 'data.epochs=2',
       'eval.val_tokens=1024', 'eval.num_evals=3', 'eval.batch_size=8', 'train.log_every=1',
       'train.progress=false', 'eval.tasks=', 'checkpoint.every=4', 'checkpoint.keep=2',
       'objective=ar']


def cfg(run_dir):
  return config_lib.load_config([str(ROOT / 'configs/tiny.yaml')], [*RUN, f'run_dir={run_dir}'])


@pytest.fixture(scope='module')
def whole(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp('faults') / 'whole'
  result = train.run(cfg(run_dir))
  return run_dir, result


def largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max((p for p in (step_dir / 'state').rglob('*') if p.is_file()),
             key=lambda p: p.stat().st_size)


def flip(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def truncate(path):
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def remove(path):
  path.unlink()


@pytest.mark.parametrize('damage, unsealed', [
    (flip, False), (truncate, False), (remove, False),
    # Killed between orbax finishing a step and the manifest: trusted only if it restores.
    (truncate, True)])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_one_before_used(
    whole, tmp_path, capfd, damage, unsealed, counts):
  src, result = whole
  run_dir = tmp_path / 'run'
  shutil.copytree(src, run_dir)
  (run_dir / 'result.json').unlink()
  steps = sorted(int(p.name) for p in (run_dir / 'checkpoints').iterdir() if p.name.isdigit())
  latest, before = steps[-1], steps[-2]
  step_dir = run_dir / 'checkpoints' / str(latest)
  assert (step_dir / MANIFEST).is_file(), 'every finished step is sealed'
  if unsealed:
    (step_dir / MANIFEST).unlink()
  victim = largest_array_file(step_dir)
  damage(victim)
  capfd.readouterr()

  again = train.run(cfg(run_dir))

  captured = capfd.readouterr()
  log = captured.out + captured.err
  assert f'checkpoint step {latest} in {run_dir / "checkpoints"} is unusable' in log, log
  if not unsealed:
    assert str(victim.relative_to(step_dir)) in log  # the file is named
  assert f'trying step {before}' in log
  assert f'resuming at step {before}/' in log
  bad = list((run_dir / 'checkpoints.bad').iterdir())
  assert len(bad) == 1 and bad[0].name.startswith(f'{latest}-')  # kept, not deleted
  assert again['val_loss'] == result['val_loss']
  assert_finished_like(src, run_dir)
  counts['checkpoints_damaged_and_recovered'] += 1


def test_loading_a_run_whose_checkpoint_is_damaged_names_the_file(whole, tmp_path, counts):
  run_dir = tmp_path / 'run'
  shutil.copytree(whole[0], run_dir)
  latest = max(int(p.name) for p in (run_dir / 'checkpoints').iterdir() if p.name.isdigit())
  victim = largest_array_file(run_dir / 'checkpoints' / str(latest))
  flip(victim)
  with pytest.raises(CorruptCheckpoint, match=f'checkpoint step {latest} in .*{victim.name}'):
    dlmjax.load_run(run_dir)
  assert issubclass(CorruptCheckpoint, UserError)  # the CLIs print it as one line
  counts['checkpoints_damaged_and_detected_on_load'] += 1


def test_with_every_checkpoint_damaged_the_run_starts_over_and_still_matches(
    whole, tmp_path, capfd):
  src, result = whole
  run_dir = tmp_path / 'run'
  shutil.copytree(src, run_dir)
  (run_dir / 'result.json').unlink()
  for step_dir in (run_dir / 'checkpoints').iterdir():
    if step_dir.name.isdigit():
      flip(largest_array_file(step_dir))
  again = train.run(cfg(run_dir))
  assert 'none left: starting from scratch' in capfd.readouterr().err
  assert again['val_loss'] == result['val_loss']
