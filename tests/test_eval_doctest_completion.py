"""The execution-checked generation task: its problems come from held-out files and are
stable, the true bodies pass and doing nothing fails, an oracle scores 100% and a wrong
model 0, generated text is cut where the function ends, hostile bodies cannot forge a pass
or escape their process, and both samplers run it through TaskSuite."""

import dataclasses
import os

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax.config import Config, ModelConfig
from dlmjax.data.store import is_val_name
from dlmjax.data.tokenizer import ByteTokenizer
from dlmjax.errors import UserError
from dlmjax.eval import tasks
from dlmjax.eval.tasks import doctest_completion as dc
from dlmjax.model.transformer import Transformer

VAL_FRACTION = 0.02
WINDOW = 1 << 20  # the whole file fits: the oracle below looks prompts up whole


@pytest.fixture(scope='module')
def problems():
  return dc.problems(VAL_FRACTION)


def test_problems_are_held_out_functions_with_doctests_in_a_fixed_order(problems):
  assert len(problems) >= 10 and not any(p.qualname == "Counter.__init__" for p in problems)
  assert [p.id for p in dc.problems.__wrapped__(VAL_FRACTION)] == [p.id for p in problems]
  for p in problems:
    assert is_val_name(p.file, VAL_FRACTION)
    assert p.prompt.rstrip().endswith(('"""', "'''")) and '>>>' in p.prompt
    assert p.body.strip() and p.prompt + p.body + p.suffix == next(
        d.text for d in dc.held_out_files(VAL_FRACTION) if d.name == p.file)
  assert len({p.id for p in problems}) == len(problems)


def test_the_true_body_passes_and_the_stub_and_a_wrong_body_fail(problems):
  p = problems[0]
  wrong = dc.one_line_body(p, 'return None\n')
  true, stub, bad = dc.check_all([p] * 3, [p.body, '', wrong])
  assert true['passed'] and true['attempted'] > 0 and true['failed'] == 0
  assert not stub['passed'] and not bad['passed']


def test_generated_text_is_cut_at_the_first_line_that_leaves_the_function():
  text = '        x = 1\n\n        return x\n    def other(self):\n        pass\n'
  assert dc.function_body(text, indent=4) == '        x = 1\n\n        return x\n'
  assert dc.function_body('\tif a:\n\t\tb\nc = 2\n', indent=0) == '\tif a:\n\t\tb\n'
  assert dc.function_body('def g():\n  pass\n', indent=0) == ''
  assert dc.function_body('', indent=4) == ''


def _byte_generate(answers: dict[tuple, str], tok):
  def generate(prompts):
    return [tok.encode(answers[tuple(ids)]) for ids in prompts]
  return generate


def test_an_oracle_scores_100_and_a_model_that_returns_nothing_scores_0(problems):
  tok = ByteTokenizer()
  prompt = lambda p: tuple(dc.prompt_ids(tok, p, WINDOW))
  # The oracle writes the true body and keeps going into the rest of the file, as a model
  # would: the cut must stop it at the function's end.
  oracle = {prompt(p): p.body + p.suffix[:200] for p in problems}
  got = dc.evaluate(_byte_generate(oracle, tok), tok, problems, window=WINDOW, new_tokens=1)
  assert got['acc'] == 1.0 and got['items'] == len(problems)
  assert got['compiled'] == 1.0 and got['empty'] == 0.0
  assert got['item_correct'] == '1' * len(problems) and got['chance'] == 0.0
  nothing = {prompt(p): ' ' * (p.indent + 4) + 'return None\n' for p in problems}
  got = dc.evaluate(_byte_generate(nothing, tok), tok, problems, window=WINDOW, new_tokens=1)
  assert got['acc'] == 0.0 and got['item_correct'] == '0' * len(problems)
  assert got['acc_stderr'] == 0.0


def test_the_prompt_keeps_bos_and_the_files_last_tokens():
  tok = ByteTokenizer()
  p = dc.problems(VAL_FRACTION)[0]
  ids = dc.prompt_ids(tok, p, 50)
  assert len(ids) == 50 and ids[0] == tok.bos_id and ids[1:] == tok.encode(p.prompt)[-49:]


def test_hostile_bodies_cannot_pass_or_leave_their_scratch_directory(problems, tmp_path,
                                                                     monkeypatch):
  monkeypatch.setattr(dc, 'TIMEOUT_S', 3.0)
  monkeypatch.chdir(tmp_path)
  p = problems[0]
  pad = ' ' * (p.indent + 4)
  forged = (f'{pad}import sys\n{pad}sys.__stdout__.write("\\n" + "0" * 32 + '
            '\'{"attempted": 1, "failed": 0, "error": ""}\\n\')\n'
            f'{pad}sys.__stdout__.flush()\n{pad}import os; os._exit(0)\n')
  bodies = {'loops': f'{pad}while True:\n{pad}  pass\n', 'exits': f'{pad}import os; os._exit(0)\n',
            'forges': forged, 'writes': f'{pad}open("escaped.txt", "w").write("x")\n',
            'syntax': f'{pad}return (\n'}
  results = dict(zip(bodies, dc.check_all([p] * len(bodies), list(bodies.values()))))
  assert not any(r['passed'] for r in results.values())
  assert results['loops']['error'] == 'Timeout'
  assert results['syntax']['error'] == 'SyntaxError'
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('causal', [True, False])
def test_both_samplers_run_the_task_through_the_suite(causal):
  tok = ByteTokenizer()
  micro = ModelConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: Transformer(micro, tok.vocab_size, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype), state)
  cfg = Config()
  cfg.model = micro
  cfg.data.seq_len = 64
  cfg.eval = dataclasses.replace(cfg.eval, tasks=dc.NAME, task_items=2, gen_tokens=32)
  specs = tasks.split_specs(cfg.eval.tasks)
  assert specs == [dc.NAME] and dc.NAME not in tasks.split_specs(tasks.SUITE)
  suite = tasks.TaskSuite(specs, cfg, tok, lambda params: nnx.merge(graphdef, params),
                          causal=causal)
  got = suite(state)[dc.NAME]
  assert got['items'] == 2 and got['acc'] == 0.0 and got['new_tokens'] == 32
  assert got['estimator'] == 'greedy'


def test_the_task_is_a_valid_spec_without_a_path_and_has_no_multiple_choice_items():
  tasks.check_spec(dc.NAME)
  with pytest.raises(UserError, match='embedded'):
    tasks.check_spec(dc.NAME + ':x.jsonl')
  with pytest.raises(UserError, match='TaskSuite'):
    tasks.load_task(dc.NAME, val_fraction=VAL_FRACTION)


def test_macro_accuracies_leave_the_generation_task_out():
  from dlmjax import demo
  from experiments import claims
  mc = {'acc': 0.5, 'acc_stderr': 0.1, 'item_correct': '1010'}
  gen = {'kind': dc.KIND, 'acc': 0.0, 'acc_stderr': 0.0, 'item_correct': '0000'}
  assert demo._macro({'a': mc, dc.NAME: gen}) == demo._macro({'a': mc})
  ar = {'epochs': 32, 'seed': 0, 'tasks': {'a': mc, dc.NAME: gen}}
  mdm = {'epochs': 250, 'seed': 0, 'tasks': {'a': dict(mc, item_correct='1111'), dc.NAME: gen}}
  assert claims.accuracy_gap([(ar, mdm)], resamples=10)['tasks'] == ['a']
