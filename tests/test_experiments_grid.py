"""The grid registry and runner: grids are valid data, and `run` is resumable, shareable
between concurrent runners, and survives failing runs."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from dlmjax import config as config_lib
from experiments import grid as grid_lib
from experiments import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]

# tests/test_train.py's MICRO with a smaller budget and one eval: each run is a few seconds,
# most of it process start-up and compilation.
MICRO = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
         'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=5000', 'data.epochs=1',
         'eval.val_tokens=1024', 'eval.num_evals=1', 'eval.batch_size=8', 'eval.mdm_samples=2',
         'eval.tasks=', 'train.log_every=5']


def grid_cmd(*args):
  return [sys.executable, '-m', 'experiments.grid', *args]


def run_grid(*args, **kw):
  return subprocess.run(grid_cmd(*args), cwd=ROOT, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------------------
# The registry.

def test_paper_dense_runs_see_exactly_96b_tokens_except_the_480_epoch_runs():
  grid = registry.get('paper-dense')
  long = [r for r in grid.runs if r.epochs == 480]
  assert sorted(r.name for r in long) == ['ar-1b-u1B-e480-s0', 'mdm-1b-u1B-e480-s0']
  rest = [r for r in grid.runs if r.epochs != 480]
  assert len(rest) == 2 * 4 * 5
  for r in rest:
    assert r.unique_tokens * r.epochs == 96e9, r.name
    assert r.tokens == 96_000_000_000
  assert {r.epochs for r in rest} == {192, 96, 64, 9.6, 1}
  assert {r.model for r in rest} == {'1b', '2b', '4b', '8b'}


@pytest.mark.parametrize('name', registry.names())
def test_run_names_are_unique_and_encode_the_run(name):
  grid = registry.get(name)
  names = [r.name for r in grid.runs]
  assert len(set(names)) == len(names)
  for r in grid.runs:
    assert r.name.startswith(f'{r.objective}-{r.model}-u')
    assert f'-s{r.seed}' in r.name
    assert r.tokens == round(r.unique_tokens * r.epochs)
    assert r.flops > 0


@pytest.mark.parametrize('name', registry.names())
def test_every_run_config_loads(name):
  grid = registry.get(name)
  for r in grid.runs:
    cfg = config_lib.load_config(grid.config_paths(), r.overrides)
    assert cfg.objective == r.objective
    assert cfg.data.unique_tokens == r.unique_tokens and cfg.data.epochs == r.epochs


def test_grids_hold_the_requested_shapes():
  sizes = {n: len(registry.get(n).runs) for n in registry.names()}
  assert sizes == {'paper-dense': 42, 'paper-moe': 10, 'paper-coder': 2,
                   'ablation-regularisers': 25, 'ablation-regularisers-0.6b': 25,
                   'crossover-tiny': 6, 'crossover-small': 16, 'recipe-tiny': 103,
                   'demo-tiny': 7, 'ablation-regularisers-tiny': 29, 'headline-small': 42}
  coder = registry.get('paper-coder').runs
  assert all(r.tokens == 1_500_000_000_000 for r in coder)
  tiny = registry.get('crossover-tiny').runs
  assert sorted({r.epochs for r in tiny}) == [1, 8, 64]
  assert all(r.tokens == 2_000_000 for r in tiny)
  small = registry.get('crossover-small')
  wide = config_lib.load_config(small.config_paths(), small.runs[-1].overrides)
  assert small.runs[-1].model == 'tiny-wide' and wide.model.d_model == 192
  # The FLOPs follow the model: the wide model costs more per token.
  assert small.runs[-1].flops > small.runs[0].flops
  abl = registry.get('ablation-regularisers')
  assert {r.objective for r in abl.runs} == {'ar', 'mdm'}
  assert sum(r.objective == 'mdm' for r in abl.runs) == 3
  # The first paper's ranges: input masking and MLP dropout up to 90%, attention dropout
  # (the second paper's), parameter noise no larger than the init std.
  cfgs = [config_lib.load_config(abl.config_paths(), r.overrides) for r in abl.runs]
  assert max(c.ar.input_mask_rate for c in cfgs) == 0.9
  assert max(c.model.mlp_dropout for c in cfgs) == 0.9
  assert max(c.model.attn_dropout for c in cfgs) > 0
  assert 0 < max(c.ar.param_noise_std for c in cfgs) <= cfgs[0].model.init_std


def test_unknown_grid_is_a_user_error():
  with pytest.raises(Exception, match='known grids: paper-dense'):
    registry.get('nope')


# ---------------------------------------------------------------------------------------
# The command line.

@pytest.mark.parametrize('name', registry.names())
def test_dry_run_of_every_grid_exits_0_and_trains_nothing(name, tmp_path, capsys):
  assert grid_lib.main(['run', name, '--dry-run', '--out', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert not (tmp_path / 'runs').exists()
  assert f'{len(registry.get(name).runs)} of {len(registry.get(name).runs)} runs resolve' in out


def test_user_errors_are_one_line_and_exit_2(capsys):
  # In this process (the command line's own exit path is tested once, below).
  for args in (['show', 'nope'], ['run', 'crossover-tiny', '--dry-run', 'model.nope=1'],
               ['run', 'crossover-tiny', '--only', 'zzz*'], ['tensorboard', 'nope']):
    with pytest.raises(SystemExit) as e:
      grid_lib.main(args)
    assert e.value.code == 2, args
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1, err
  proc = run_grid('show', 'nope')
  assert proc.returncode == 2 and proc.stderr.startswith('error: ') and (
      proc.stderr.count('\n') == 1), proc.stderr


@pytest.mark.slow  # 12 s of subprocesses printing tables
def test_list_and_show_print_the_grids():
  proc = run_grid('list')
  assert proc.returncode == 0 and 'crossover-tiny' in proc.stdout
  proc = run_grid('show', 'crossover-tiny')
  assert proc.returncode == 0 and 'mdm-tiny-u31.25K-e64-s0' in proc.stdout


# ---------------------------------------------------------------------------------------
# Locks.

def test_stale_lock_from_a_dead_pid_is_reclaimed_and_a_live_one_is_not(tmp_path):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  rdir = tmp_path / 'run'
  rdir.mkdir()
  (rdir / 'lock').write_text(json.dumps({'pid': dead.pid, 'host': socket.gethostname()}))
  assert grid_lib.run_state(rdir)[1] == 'stale lock'
  assert grid_lib.claim(rdir)
  assert json.loads((rdir / 'lock').read_text())['pid'] == os.getpid()
  assert not grid_lib.claim(rdir)  # held by a live process (this one)
  grid_lib.release(rdir)
  assert not (rdir / 'lock').exists()
  # Another host's lock cannot be checked, so it is respected.
  (rdir / 'lock').write_text(json.dumps({'pid': dead.pid, 'host': 'elsewhere'}))
  assert not grid_lib.claim(rdir)
  assert grid_lib.run_state(rdir)[0] == 'running'


# ---------------------------------------------------------------------------------------
# Running micro trainings.

def _done_lines(rdir):
  return (rdir / 'train.log').read_text().count(': done.')


def test_run_is_resumable_and_skips_complete_runs(tmp_path):
  out = tmp_path / 'out'
  args = ['run', 'crossover-tiny', '--out', str(out), '--only', '*-u31.25K-*', '--workers', '2',
          *MICRO]
  proc = run_grid(*args)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rdirs = [out / 'runs' / n for n in ('ar-tiny-u31.25K-e64-s0', 'mdm-tiny-u31.25K-e64-s0')]
  assert sorted(p.name for p in (out / 'runs').iterdir()) == sorted(p.name for p in rdirs)
  mtimes = [(r / 'result.json').stat().st_mtime_ns for r in rdirs]
  assert [json.loads((r / 'result.json').read_text())['objective'] for r in rdirs] == ['ar', 'mdm']

  proc = run_grid(*args)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert '0 trained, 2 already complete' in proc.stdout
  assert [(r / 'result.json').stat().st_mtime_ns for r in rdirs] == mtimes
  assert all(_done_lines(r) == 1 for r in rdirs)

  proc = run_grid('status', 'crossover-tiny', '--out', str(out), *MICRO)
  assert proc.returncode == 0
  assert '2 done, 0 running, 0 failed, 4 pending' in proc.stdout
  assert '20/20 (100%)' in proc.stdout


@pytest.mark.slow  # 40 s; the locks it relies on are tested alone above
def test_two_concurrent_runners_train_every_run_exactly_once(tmp_path):
  out = tmp_path / 'out'
  args = grid_cmd('run', 'crossover-tiny', '--out', str(out), '--only', 'ar-*', *MICRO)
  procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for _ in range(2)]
  logs = [p.communicate(timeout=120)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), logs
  rdirs = sorted((out / 'runs').iterdir())
  assert len(rdirs) == 3
  for rdir in rdirs:
    assert (rdir / 'result.json').exists()
    assert _done_lines(rdir) == 1, rdir
    assert not (rdir / 'lock').exists()
  trained = [int(log.rsplit(': ', 1)[1].split(' trained')[0]) for log in logs]
  assert sum(trained) == 3, logs


# Slow (17 s): tests/faults/test_grid.py has the runner report a failed run (in CI).
@pytest.mark.slow
def test_a_failing_run_is_recorded_and_does_not_stop_the_rest(tmp_path, monkeypatch, capsys):
  configs = ('configs/tiny.yaml',)
  # A valid config whose data cannot be found: it fails at start-up, inside the trainer.
  bad = registry.make_run(configs, 'ar', 'tiny', 5000, 1.0, tag='nodata',
                          extras=('data.corpus=files:/nonexistent/*.txt',))
  good = registry.make_run(configs, 'mdm', 'tiny', 5000, 1.0)
  test_grid = registry.Grid('test-failing', 'one bad run, one good', 'CPU', configs, (bad, good))
  monkeypatch.setitem(registry.GRIDS, 'test-failing', test_grid)
  out = tmp_path / 'out'
  rc = grid_lib.main(['run', 'test-failing', '--out', str(out), *MICRO])
  assert rc == 1
  assert '1 trained, 0 already complete, 0 taken by another runner, 1 failed' in capsys.readouterr().out
  failed = json.loads((out / 'runs' / bad.name / 'failed.json').read_text())
  assert failed['exit_code'] == 2
  assert any('error:' in line for line in failed['log_tail'])
  assert (out / 'runs' / good.name / 'result.json').exists()
  assert not (out / 'runs' / good.name / 'failed.json').exists()
  assert grid_lib.main(['status', 'test-failing', '--out', str(out)]) == 0
  assert '1 done, 0 running, 1 failed, 0 pending' in capsys.readouterr().out


def test_report_on_a_grid_with_no_finished_runs_lists_them_all_as_incomplete(tmp_path, capsys):
  assert grid_lib.main(['report', 'crossover-tiny', '--out', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  for name in ('report.md', 'summary.json'):
    assert (tmp_path / name).is_file() and str(tmp_path / name) in out
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert sorted(summary['incomplete']) == sorted(r.name for r in registry.get('crossover-tiny').runs)
  assert summary['runs'] == []
