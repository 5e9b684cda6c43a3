"""TensorBoard events (and the optional W&B log): they hold what the JSON logs hold, every
step once after a resume, and a grid's runs open side by side."""

import pathlib
import sys
import types

import pytest

from dlmjax import summaries, train
from dlmjax.errors import UserError
from dlmjax.rundir import RunDir, append_jsonl, read_jsonl, truncate_jsonl
from experiments import grid as grid_lib
from experiments import registry


def _metrics(step, loss):
  return {'step': step, 'tokens_seen': 64 * step, 'loss': loss, 'lr': 1e-3, 'grad_norm': 1.0,
          'epoch': step / 10, 'tokens_per_s': 1e4, 'mfu': None}


def _eval(step, val_loss):
  return {'step': step, 'tokens_seen': 64 * step, 'epoch': step / 10, 'val_loss': val_loss,
          'val_loss_stderr': 0.1, 'val_bits_per_byte': 2 * val_loss, 'val_tokens': 100,
          'val_samples': 4, 'tasks': {'code_cloze': {'acc': 0.5, 'acc_stderr': 0.05,
                                                     'acc_norm': 0.25, 'items': 100}}}


def _log(rd, log, step, loss):
  rec = _metrics(step, loss)
  append_jsonl(rd.metrics, rec)
  log.train(rec)
  if step % 5 == 0:
    ev = _eval(step, loss)
    append_jsonl(rd.evals, ev)
    log.eval(ev)


def test_eval_tags_carry_the_standard_error_in_both_units():
  got = summaries.eval_scalars(_eval(5, 3.0))
  assert got['val/loss'] == 3.0 and got['val/bits_per_byte'] == 6.0
  assert got['val/bits_per_byte_stderr'] == pytest.approx(0.2)  # the same ratio as the means
  assert got['tasks/code_cloze/acc'] == 0.5 and got['tasks/code_cloze/acc_norm'] == 0.25
  assert 'tasks/code_cloze/items' not in got
  assert set(summaries.train_scalars(_metrics(3, 1.0))) == {
      'train/loss', 'train/lr', 'train/grad_norm', 'train/epoch', 'train/tokens_per_s'}


def test_a_resumed_run_has_every_step_once_with_the_values_logged_after_the_resume(tmp_path):
  rd = RunDir(tmp_path)
  log = summaries.Summaries(rd, 0)
  for step in range(1, 11):
    _log(rd, log, step, 10.0 + step)
  # a kill after step 10, with the last checkpoint at step 6
  truncate_jsonl(rd.metrics, 6)
  truncate_jsonl(rd.evals, 6)
  log = summaries.Summaries(rd, 6)
  for step in range(7, 13):
    _log(rd, log, step, 20.0 + step)  # not what the killed process logged for 7-10
  log.close()
  got = summaries.read_scalars(tmp_path / 'tensorboard')
  want = [(s, 10.0 + s) for s in range(1, 7)] + [(s, 20.0 + s) for s in range(7, 13)]
  assert got['train/loss'] == want
  assert got['val/loss'] == [(5, 15.0), (10, 30.0)]
  assert [(r['step'], r['loss']) for r in read_jsonl(rd.metrics)] == want


def test_a_run_restarted_from_scratch_drops_its_old_events(tmp_path):
  rd = RunDir(tmp_path)
  log = summaries.Summaries(rd, 0)
  _log(rd, log, 1, 5.0)
  log.close()
  log = summaries.Summaries(rd, 0, tensorboard=True)
  _log(rd, log, 1, 7.0)
  log.close()
  assert summaries.read_scalars(tmp_path / 'tensorboard')['train/loss'] == [(1, 7.0)]


def test_tensorboard_off_and_other_processes_write_nothing(tmp_path):
  for kw in ({'tensorboard': False}, {'enabled': False}):
    log = summaries.Summaries(RunDir(tmp_path), 0, **kw)
    log.train(_metrics(1, 1.0))
    log.close()
    assert not (tmp_path / 'tensorboard').exists()


def test_wandb_gets_the_same_tags_under_one_id_per_run_dir(tmp_path, monkeypatch):
  calls = []

  class FakeRun:
    def log(self, values, step):
      calls.append(('log', step, values))

    def finish(self):
      calls.append(('finish',))

  def init(**kw):
    calls.append(('init', kw))
    return FakeRun()

  monkeypatch.setitem(sys.modules, 'wandb', types.SimpleNamespace(init=init))
  rd = RunDir(tmp_path / 'run')
  for _ in range(2):  # a resumed run continues the same W&B run
    log = summaries.Summaries(rd, 0, tensorboard=False, wandb_project='dlm',
                              config={'objective': 'mdm'}, name='mdm-tiny')
    log.train(_metrics(3, 2.5))
    log.close()
  inits = [c[1] for c in calls if c[0] == 'init']
  assert inits[0]['project'] == 'dlm' and inits[0]['name'] == 'mdm-tiny'
  assert inits[0]['config'] == {'objective': 'mdm'} and inits[0]['resume'] == 'allow'
  assert inits[0]['id'] == inits[1]['id']
  assert ('log', 3, summaries.train_scalars(_metrics(3, 2.5))) in calls


def test_wandb_without_the_package_is_a_one_line_error_naming_the_key(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # import wandb raises ImportError
  with pytest.raises(UserError, match=r"train.wandb='dlm' needs the wandb package"):
    summaries.Summaries(RunDir(tmp_path), 0, wandb_project='dlm')


def test_grid_tensorboard_names_each_run_with_events(tmp_path, capsys):
  grid = registry.get('crossover-tiny')
  out = tmp_path / 'out'
  with pytest.raises(UserError, match='no run under .* has TensorBoard events yet'):
    grid_lib.tensorboard_command(grid.runs, out, 6006)
  started = grid.runs[:2]
  for run in started:
    log = summaries.Summaries(RunDir(grid_lib.run_dir(out, run)), 0)
    log.train(_metrics(1, 1.0))
    log.close()
  argv = grid_lib.tensorboard_command(grid.runs, out, 6010)
  assert argv[1:3] == ['-m', 'tensorboard.main'] and argv[-2:] == ['--port', '6010']
  spec = argv[argv.index('--logdir_spec') + 1]
  assert spec == ','.join(f'{r.name}:{grid_lib.run_dir(out, r) / "tensorboard"}'
                          for r in started)
  assert grid_lib.main(['tensorboard', 'crossover-tiny', '--out', str(out), '--dry-run']) == 0
  assert 'tensorboard.main --logdir_spec' in capsys.readouterr().out


def test_events_are_readable_while_the_run_is_still_writing(tmp_path):
  log = summaries.Summaries(RunDir(tmp_path), 0)
  log.train(_metrics(1, 4.0))
  log.train(_metrics(2, 3.5))  # not closed: a live TensorBoard reads this
  assert summaries.read_scalars(tmp_path / 'tensorboard')['train/loss'] == [(1, 4.0), (2, 3.5)]
  log.close()


@pytest.mark.skipif(not pathlib.Path('/dev/full').exists(), reason='needs /dev/full')
def test_a_full_disk_raises_from_the_logging_call_itself(tmp_path, monkeypatch):
  """The failure surfaces where train's full-disk handling sees it, not in a writer thread."""
  # The event file opened on a device where every write fails with ENOSPC.
  monkeypatch.setattr(summaries, 'open', lambda path, mode: open('/dev/full', mode),
                      raising=False)
  with pytest.raises(OSError) as e:
    summaries.Summaries(RunDir(tmp_path), 0).train(_metrics(1, 4.0))
  assert train._disk_full(e.value)
