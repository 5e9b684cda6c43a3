"""The notebooks run top to bottom in a fresh kernel (nbclient), as Colab runs them: with run
directories given through their `parameters` cell, and making a tiny run where none is."""

import json
import pathlib
import shutil

import pytest

import fakes
from dlmjax import examples
from dlmjax.rundir import append_jsonl

nbclient = pytest.importorskip('nbclient', reason='the [dev] extra installs nbclient')
nbformat = pytest.importorskip('nbformat', reason='the [dev] extra installs nbformat')

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A run in seconds (tests/test_train.py's MICRO, one validation point).
MICRO = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
         'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=10000', 'data.epochs=2',
         'eval.val_tokens=1024', 'eval.num_evals=1', 'eval.batch_size=8', 'eval.mdm_samples=2',
         'train.log_every=5']


def execute(name: str, cwd: pathlib.Path, **params) -> list[dict]:
  """Runs notebooks/NAME.ipynb with `params` set after its parameters cell; its outputs."""
  nb = nbformat.read(ROOT / 'notebooks' / f'{name}.ipynb', as_version=4)
  tagged = [i for i, c in enumerate(nb.cells) if 'parameters' in c.metadata.get('tags', [])]
  assert len(tagged) == 1, f'{name}: one cell tagged "parameters"'
  nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(
      '\n'.join(f'{k} = {v!r}' for k, v in params.items())))
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                                   resources={'metadata': {'path': str(cwd)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
  assert not any(o.get('output_type') == 'error' for c in nb.cells for o in c.get('outputs', []))
  return [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]


def text(outputs) -> str:
  return ''.join(o.get('text', '') + o.get('data', {}).get('text/plain', '')
                 + o.get('data', {}).get('text/markdown', '') for o in outputs)


def images(outputs) -> int:
  return sum('image/png' in o.get('data', {}) for o in outputs)


@pytest.fixture(scope='module')
def example_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('examples')
  examples.tiny_run('mdm', overrides=MICRO, root=root)  # the notebooks find it complete
  return root


def test_inspect_run_on_a_run_scored_later(example_root, tmp_path):
  run_dir = tmp_path / 'mdm'
  shutil.copytree(example_root / 'tiny-mdm', run_dir)
  steps = json.loads((run_dir / 'result.json').read_text())['steps']
  task = {'items': 4, 'acc': 0.5, 'acc_stderr': 0.29, 'chance': 0.25}  # a dlmjax.eval record
  append_jsonl(run_dir / 'eval.jsonl', {'step': steps, 'source': 'dlmjax.eval',
                                        'tasks': {'piqa': task}})
  out = execute('inspect_run', tmp_path, RUN_DIR=str(run_dir))
  said = text(out)
  assert f'piqa: acc 0.500 +- 0.290 at step {steps}' in said
  assert 'bits/byte' in said and 'step  1' in said
  assert images(out) == 3  # the curves, the task, the decoding order


def test_denoising_makes_the_ar_run_it_lacks_and_draws_both_answers(example_root, tmp_path):
  out = execute('denoising', tmp_path, EXAMPLE_ROOT=str(example_root), EXAMPLE_OVERRIDES=MICRO,
                PROMPT='def f(x):\n    return ', ANSWER_TOKENS=8, STEPS=4)
  said = text(out)
  assert (example_root / 'tiny-ar' / 'result.json').exists()
  assert 'MDM (mdm, 4 steps):' in said and 'AR  (ar, 8 steps):' in said
  assert '  4  MDM ' in said and '  8  MDM ' in said  # a row per step, the longer of the two
  assert 'mean confidence of the committed tokens by step' in said
  assert images(out) == 2  # the MDM's heat map and AR's row


def test_grid_report_on_a_grid_directory(tmp_path):
  from experiments import registry
  out = tmp_path / 'grid'
  for i, spec in enumerate(registry.get('demo-tiny').runs):
    tasks = {'code_cloze': fakes.task_result('1' * (50 + 5 * i) + '0' * (50 - 5 * i))}
    fakes.write_run_dir(out / 'runs' / spec.name, spec.objective, spec.unique_tokens,
                        spec.tokens, 4.0 - 0.05 * i, seed=spec.seed, tasks=tasks)
  said_out = execute('grid_report', tmp_path, GRID='demo-tiny', GRID_OUT=str(out))
  said = text(said_out)
  assert (out / 'summary.json').exists()
  assert '7 runs complete, 0 incomplete' in said
  assert '| claim | model | verdict | figures |' in said, said
  assert '| Crossover on downstream accuracy: ' in said
  assert '| ar-tiny-u16K-e32-s0 | 16,000 | 32 |' in said
  plots = json.loads((out / 'summary.json').read_text())['plots']
  assert images(said_out) == 2 + len(plots)  # one budget/seed figure per budget, the report's
