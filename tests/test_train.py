"""End to end: the train command, its run directory, resumption, and the public API."""

import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import dlmjax
from dlmjax import config as config_lib
from dlmjax import sharding, train
from dlmjax.config import MeshConfig
from dlmjax.data.tokenizer import BOS_ID, MASK_ID
from dlmjax.errors import UserError
from dlmjax.rundir import append_jsonl, read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A model small enough that a run is seconds, on the real embedded corpus.
MICRO = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
         'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=20000', 'data.epochs=2',
         'eval.val_tokens=1024', 'eval.num_evals=3', 'eval.batch_size=8', 'eval.mdm_samples=2',
         'train.log_every=5', 'train.progress=false',
         'eval.tasks=code_cloze', 'eval.task_items=6', 'eval.task_every=2']


def micro_cfg(run_dir, *overrides):
  return config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                                [*MICRO, f'run_dir={run_dir}', *overrides])


def train_cmd(run_dir, *overrides):
  return [sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', *MICRO,
          f'run_dir={run_dir}', *overrides]


@pytest.fixture(scope='module')
def ar_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp('runs') / 'ar'
  result = train.run(micro_cfg(run_dir, 'objective=ar'))
  return run_dir, result


@pytest.fixture(scope='module')
def mdm_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp('runs') / 'mdm'
  result = train.run(micro_cfg(run_dir, 'objective=mdm'))
  return run_dir, result


@pytest.mark.parametrize('which', ['ar_run', 'mdm_run'])
def test_run_dir_holds_config_metrics_evals_checkpoints_and_result(which, request):
  run_dir, result = request.getfixturevalue(which)
  for name in ('config.yaml', 'metrics.jsonl', 'eval.jsonl', 'result.json', 'tokenizer'):
    assert (run_dir / name).exists(), name
  assert any((run_dir / 'checkpoints').iterdir())
  on_disk = json.loads((run_dir / 'result.json').read_text())
  assert on_disk == result
  for key in ('objective', 'params', 'unique_tokens', 'epochs', 'train_tokens', 'steps', 'flops',
              'val_loss', 'val_bits_per_byte', 'wall_s'):
    assert key in result, key
  # Exactly U x E training tokens, in ceil(U x E / tokens per batch) steps.
  assert result['unique_tokens'] == 20000
  assert result['train_tokens'] == 40000
  assert result['steps'] == math.ceil(40000 / (8 * 32))
  metrics = read_jsonl(run_dir / 'metrics.jsonl')
  assert metrics[-1]['step'] == result['steps']
  assert metrics[-1]['tokens_seen'] == 40000
  assert metrics[-1]['epoch'] == pytest.approx(2.0)
  for key in ('loss', 'lr', 'grad_norm', 'tokens_per_s', 'mfu', 'epoch'):
    assert key in metrics[0], key
  evals = read_jsonl(run_dir / 'eval.jsonl')
  assert [e['step'] for e in evals][-1] == result['steps'] and len(evals) == 3
  assert result['val_loss'] == evals[-1]['val_loss']
  # Learning happened: below a uniform guess over the byte vocabulary.
  assert result['val_loss'] < math.log(260)
  assert result['val_bits_per_byte'] > 0


@pytest.mark.parametrize('which', ['ar_run', 'mdm_run'])
def test_tensorboard_events_hold_the_json_logs(which, request):
  from dlmjax import summaries
  run_dir, _ = request.getfixturevalue(which)
  got = summaries.read_scalars(run_dir / 'tensorboard')
  metrics, evals = read_jsonl(run_dir / 'metrics.jsonl'), read_jsonl(run_dir / 'eval.jsonl')
  for key in ('loss', 'lr', 'grad_norm', 'tokens_per_s', 'epoch'):
    assert [s for s, _ in got[f'train/{key}']] == [m['step'] for m in metrics]
    assert [v for _, v in got[f'train/{key}']] == pytest.approx([m[key] for m in metrics],
                                                                rel=1e-6)
  assert got['val/bits_per_byte'] == [
      (e['step'], pytest.approx(e['val_bits_per_byte'], rel=1e-6)) for e in evals]
  assert 'val/bits_per_byte_stderr' in got
  assert [s for s, _ in got['tasks/code_cloze/acc']] == [e['step'] for e in evals if 'tasks' in e]


def test_mdm_reports_an_elbo_with_a_standard_error(mdm_run):
  _, result = mdm_run
  assert result['val_loss_stderr'] > 0
  evals = read_jsonl(mdm_run[0] / 'eval.jsonl')
  assert all(e['val_samples'] == 2 for e in evals)


def test_the_mdm_best_checkpoint_is_rescored_with_a_fresh_seed_and_ar_needs_none(
    mdm_run, ar_run, tmp_path):
  import shutil
  from dlmjax.eval.__main__ import evaluate_run
  run_dir, result = tmp_path / 'mdm', mdm_run[1]
  shutil.copytree(mdm_run[0], run_dir)  # the eval command appends to eval.jsonl
  rescored = result['best_rescored']
  assert rescored['step'] == result['best_step'] and rescored['seed'] == 1
  # Exactly the evaluation of that checkpoint with eval.seed=1, and not the selected estimate.
  again = evaluate_run(str(run_dir), [f'step={rescored["step"]}', 'eval.seed=1'])
  assert again['val_loss'] == pytest.approx(rescored['val_loss'], rel=1e-6)
  assert rescored['val_loss'] != result['best_val_loss']
  assert 'best_rescored' not in ar_run[1]


def test_the_best_checkpoint_is_kept_beside_the_latest(tmp_path):
  from dlmjax.checkpoint import Checkpointer
  ckpt = Checkpointer(tmp_path / 'ckpt', keep=2)
  state = {'w': np.zeros(3, np.float32)}
  for step, loss in zip(range(1, 6), [3.0, 1.0, 2.0, 4.0, 5.0]):
    ckpt.save(step, state, {'pos': step}, {'step': step}, val_loss=loss)
  ckpt.save(6, state, {'pos': 6}, {'step': 6})  # e.g. a SIGTERM save: no loss
  ckpt.close()
  assert Checkpointer(tmp_path / 'ckpt', read_only=True).all_steps() == [2, 5, 6]


def test_rerunning_a_complete_run_does_nothing(ar_run):
  run_dir, result = ar_run
  mtime = (run_dir / 'result.json').stat().st_mtime
  again = train.run(micro_cfg(run_dir, 'objective=ar'))
  assert again == result and (run_dir / 'result.json').stat().st_mtime == mtime


def test_a_changed_config_in_an_existing_run_dir_is_refused(ar_run):
  with pytest.raises(UserError, match="'optimizer.lr'"):
    train.run(micro_cfg(ar_run[0], 'objective=ar', 'optimizer.lr=0.1'))


# Slow (30 s): make test's resume and fault tests already compare runs of one seed step
# for step; this adds that another seed differs.
@pytest.mark.slow
def test_same_seed_gives_the_same_loss_curve(ar_run, tmp_path):
  again = train.run(micro_cfg(tmp_path / 'again', 'objective=ar'))
  assert again['val_loss'] == ar_run[1]['val_loss']
  losses = lambda d: [m['loss'] for m in read_jsonl(d / 'metrics.jsonl')]
  assert losses(tmp_path / 'again') == losses(ar_run[0])
  train.run(micro_cfg(tmp_path / 'other', 'objective=ar', 'seed=1'))
  assert losses(tmp_path / 'other') != losses(ar_run[0])


# Slow (40 s): tests/faults/test_kill.py checks the same after SIGKILLs, in CI.
@pytest.mark.slow
def test_resume_after_sigterm_matches_an_uninterrupted_run(tmp_path):
  extra = ['objective=mdm', 'data.epochs=6', 'train.log_every=1', 'checkpoint.every=1000']
  whole = train.run(micro_cfg(tmp_path / 'whole', *extra))
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  proc = subprocess.Popen(train_cmd(tmp_path / 'cut', *extra), cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / 'cut' / 'metrics.jsonl'
  deadline = time.time() + 120
  while time.time() < deadline and len(read_jsonl(metrics)) < 20 and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert 'SIGTERM' in out
  cut_at = read_jsonl(metrics)[-1]['step']
  assert cut_at < whole['steps'], 'the run ended before the signal; make it longer'
  assert not (tmp_path / 'cut' / 'result.json').exists()

  resumed = train.run(micro_cfg(tmp_path / 'cut', *extra))
  a, b = dlmjax.load_run(tmp_path / 'whole'), dlmjax.load_run(tmp_path / 'cut')
  assert a.step == b.step == whole['steps']
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The same batches in the same order: every logged loss agrees, before and after the cut.
  whole_losses = [m['loss'] for m in read_jsonl(tmp_path / 'whole' / 'metrics.jsonl')]
  cut_losses = [m['loss'] for m in read_jsonl(metrics)]
  assert cut_losses == whole_losses
  assert resumed['val_loss'] == whole['val_loss']


def test_load_run_reads_the_parameters_alone_and_builds_no_optimizer(ar_run, monkeypatch):
  from dlmjax.checkpoint import Checkpointer

  directory = pathlib.Path(ar_run[0])
  ckpt = Checkpointer(directory / 'checkpoints', read_only=True)
  step = ckpt.latest_step()
  trainer = train.Trainer(config_lib.read_config_file(directory / 'config.yaml'),
                          sharding.make_mesh(MeshConfig(1, 1, 1, 1),
                                             devices=jax.devices()[:1]), num_steps=step)
  full, _, _ = ckpt.restore(step, trainer.abstract_state)
  ckpt.close()

  def no_optimizer(*args, **kwargs):
    raise AssertionError('inference built an optimizer')
  monkeypatch.setattr(train, 'make_optimizer', no_optimizer)
  run = dlmjax.load_run(directory)
  assert run.step == step
  for x, y in zip(jax.tree.leaves(full['params']), jax.tree.leaves(run.params), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_load_run_ar_nll_is_the_exact_sum_of_next_token_log_probs(ar_run):
  run = dlmjax.load_run(ar_run[0])
  assert run.tokenizer.mask_id == MASK_ID
  text = 'def add(a, b):\n    return a + b\n'
  ids = [BOS_ID] + run.tokenizer.encode(text)
  tokens = np.array([ids, ids[::-1]], np.int32)
  logits = run.logits(tokens)
  assert logits.shape == (2, len(ids), run.tokenizer.vocab_size) and logits.dtype == np.float32
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  expected = -np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], -1).sum((1, 2))
  nll = run.nll(tokens)
  assert nll.dtype == np.float64 and nll.shape == (2,)
  np.testing.assert_allclose(nll, expected, rtol=1e-4)
  # Causal: changing the last token leaves every earlier position's logits unchanged.
  changed = tokens.copy()
  changed[:, -1] = MASK_ID
  np.testing.assert_array_equal(run.logits(changed)[:, :-1], logits[:, :-1])


def test_load_run_mdm_logits_are_bidirectional_and_nll_is_seeded(mdm_run):
  run = dlmjax.load_run(mdm_run[0])
  ids = [BOS_ID] + run.tokenizer.encode('import os\nprint(os.getcwd())\n')
  tokens = np.array([ids], np.int32)
  changed = tokens.copy()
  changed[:, -1] = MASK_ID
  assert not np.allclose(run.logits(changed)[:, 0], run.logits(tokens)[:, 0])
  a = run.nll(tokens, num_samples=8, seed=3)
  b = run.nll(tokens, num_samples=8, seed=3)
  c = run.nll(tokens, num_samples=8, seed=4)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.dtype == np.float64 and a[0] > 0


def test_eval_command_recomputes_the_final_validation_loss(ar_run):
  run_dir, result = ar_run
  proc = subprocess.run([sys.executable, '-m', 'dlmjax.eval', str(run_dir)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  last = read_jsonl(run_dir / 'eval.jsonl')[-1]
  assert last['source'] == 'dlmjax.eval' and last['step'] == result['steps']
  assert last['val_loss'] == pytest.approx(result['val_loss'], rel=1e-6)
  bad = subprocess.run([sys.executable, '-m', 'dlmjax.eval', str(run_dir / 'nope')], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and 'not a run directory' in bad.stderr


@pytest.mark.parametrize('which', ['ar_run', 'mdm_run'])
def test_task_accuracy_is_logged_at_every_second_eval_and_the_last_and_in_the_result(which, request):
  run_dir, result = request.getfixturevalue(which)
  evals = read_jsonl(run_dir / 'eval.jsonl')
  steps = [r['step'] for r in evals if 'source' not in r]
  assert [r['step'] for r in evals if 'tasks' in r] == [steps[1], steps[2]]  # 3 evals
  cloze = next(r for r in reversed(evals) if 'tasks' in r and 'source' not in r)['tasks']['code_cloze']
  assert cloze['items'] == 6 and cloze['chance'] == 0.25
  assert 0.0 <= cloze['acc'] <= 1.0 and 0.0 <= cloze['acc_norm'] <= 1.0
  assert cloze['delta_nll'] == pytest.approx(cloze['nll_alt'] - cloze['nll_true'])
  assert cloze['estimator'] == ('exact' if which == 'ar_run' else 'llada')
  assert result['tasks']['code_cloze'] == cloze


def test_eval_command_scores_tasks_and_appends_them(mdm_run, tmp_path):
  import shutil

  from dlmjax.eval.__main__ import evaluate_run

  run_dir, result = tmp_path / 'mdm', mdm_run[1]
  shutil.copytree(mdm_run[0], run_dir)  # the eval command appends to eval.jsonl
  fixture = ROOT / 'tests' / 'fixtures' / 'piqa' / 'valid.jsonl'
  rec = evaluate_run(str(run_dir), [f'tasks=code_cloze,piqa:{fixture}', 'eval.task_items=4',
                                    'eval.task_estimator=chain_rule'])
  assert rec['source'] == 'dlmjax.eval' and rec['step'] == result['steps']
  assert set(rec['tasks']) == {'code_cloze', 'piqa'}
  assert rec['tasks']['piqa']['items'] == 3 and rec['tasks']['piqa']['chance'] == 0.5
  assert rec['tasks']['piqa']['estimator'] == 'chain_rule'
  assert read_jsonl(run_dir / 'eval.jsonl')[-1] == rec
  from dlmjax import summaries
  tb = summaries.read_scalars(run_dir / 'tensorboard')
  assert tb['tasks/piqa/acc'] == [(rec['step'], pytest.approx(rec['tasks']['piqa']['acc']))]
  with pytest.raises(UserError, match='unknown task'):
    evaluate_run(str(run_dir), ['tasks=lambada'])


@pytest.mark.parametrize('which', ['ar_run', 'mdm_run'])
def test_sample_command_continues_a_prompt_from_a_trained_run(which, request, capsys):
  from dlmjax import sample

  run_dir, _ = request.getfixturevalue(which)
  capsys.readouterr()  # drop what training the run printed
  sample.main([str(run_dir), 'prompt=def f(x):\\n', 'max_new_tokens=16', 'steps=8',
               'temperature=1.0', 'stop_at_eos=false', 'view=plain'])
  out = capsys.readouterr()
  assert out.out.startswith('def f(x):\n') and len(out.out) > len('def f(x):\n')
  assert f'{which[:-4]} step' in out.err and '16 tokens' in out.err and 'tokens/s' in out.err
