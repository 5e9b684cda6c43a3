"""The lm-eval adapter against the native harness, on trained micro runs (AR and MDM).

Runs where lm-eval is installed (`make test-eval` installs the `[eval]` extra and runs this
file); skipped otherwise. Nothing is downloaded: the lm-eval task is a local YAML over the
ARC-Easy fixture, loaded with the `json` dataset builder offline.
"""

import os
import pathlib
import tempfile

import numpy as np
import pytest

# datasets reads these when it is imported: keep lm-eval offline and its cache out of $HOME.
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HOME', tempfile.mkdtemp(prefix='dlmjax-test-hf-'))
lm_eval = pytest.importorskip('lm_eval')

import dlmjax  # noqa: E402
from dlmjax import config as config_lib, train  # noqa: E402
from dlmjax.data.tokenizer import BOS_ID  # noqa: E402
from dlmjax.eval import tasks  # noqa: E402
from dlmjax.eval.lm_eval_adapter import DlmjaxLM  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'
ARC = FIXTURES / 'arc' / 'ARC-Easy' / 'ARC-Easy-Test.jsonl'
MICRO = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
         'data.seq_len=128', 'train.batch_size=8', 'data.unique_tokens=20000', 'data.epochs=1',
         'eval.val_tokens=1024', 'eval.num_evals=1', 'eval.batch_size=8', 'eval.mdm_samples=1',
         'eval.tasks=', 'train.progress=false']


@pytest.fixture(scope='module', params=['ar', 'mdm'])
def run(request, tmp_path_factory):
  run_dir = tmp_path_factory.mktemp('runs') / request.param
  train.run(config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                                   [*MICRO, f'objective={request.param}', f'run_dir={run_dir}']))
  return dlmjax.load_run(run_dir)


@pytest.fixture(scope='module')
def include_path(tmp_path_factory):
  d = tmp_path_factory.mktemp('lm_eval_tasks')
  text = (FIXTURES / 'lm_eval' / 'arc_easy_fixture.yaml').read_text()
  (d / 'arc_easy_fixture.yaml').write_text(text.replace('ARC_EASY_FIXTURE', str(ARC)))
  return str(d)


def test_lm_eval_task_matches_the_native_harness_item_for_item(run, include_path):
  from lm_eval import simple_evaluate
  from lm_eval.tasks import TaskManager

  lm = DlmjaxLM(run=run, estimator='llada', num_samples=3)
  out = simple_evaluate(model=lm, tasks=['dlmjax_arc_easy_fixture'], log_samples=True,
                        task_manager=TaskManager(include_path=include_path))
  theirs = out['results']['dlmjax_arc_easy_fixture']

  cfg = run.config
  cfg.eval.task_estimator, cfg.eval.task_samples = 'llada', 3
  suite = tasks.TaskSuite([f'arc_easy:{ARC}'], cfg, run.tokenizer, run.model_fn,
                          causal=run.causal)
  ours = suite(run.params)['arc_easy']
  assert theirs['acc,none'] == pytest.approx(ours['acc'])
  assert theirs['acc_norm,none'] == pytest.approx(ours['acc_norm'])

  # Per choice: lm-eval's log-likelihoods are the native scorer's, to float precision.
  enc = suite.encoded['arc_easy']
  native = suite.scorer(run.params, enc.pairs)
  samples = sorted(out['samples']['dlmjax_arc_easy_fixture'], key=lambda s: s['doc_id'])
  got = [float(r[0][0]) for s in samples for r in s['resps']]
  np.testing.assert_allclose(got, native, rtol=1e-6)


def test_rolling_loglikelihood_is_the_exact_nll_for_ar_and_covers_long_texts(run):
  from lm_eval.api.instance import Instance

  lm = DlmjaxLM(run=run, num_samples=2)
  short = 'def f(x):\n    return x + 1\n'
  long = short * 12  # several 128-token windows
  got_short, got_long = lm.loglikelihood_rolling(
      [Instance('loglikelihood_rolling', {}, (t,), i) for i, t in enumerate((short, long))])
  ids = run.tokenizer.encode(short)
  if run.causal:  # one window: log p(text | BOS), exactly
    assert got_short == pytest.approx(-run.nll(np.array([[BOS_ID] + ids]))[0], rel=1e-5)
  assert np.isfinite(got_long) and got_long < 6 * got_short < 0


def test_generate_until_returns_text_cut_at_the_stop_string(run):
  from lm_eval.api.instance import Instance

  lm = DlmjaxLM(run=run)
  reqs = [Instance('generate_until', {}, ('def f(x):\n', {'until': ['\n\n'], 'max_gen_toks': 16}), 0),
          Instance('generate_until', {}, ('import os\n', {'until': ['zzz'], 'max_gen_toks': 8}), 1)]
  a, b = lm.generate_until(reqs)
  assert isinstance(a, str) and '\n\n' not in a
  assert isinstance(b, str) and len(b) <= 8
