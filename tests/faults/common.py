"""What the fault tests check after a recovery: the run finished as an undisturbed one did."""

import json
import pathlib

import jax
import numpy as np

import dlmjax
from dlmjax import summaries
from dlmjax.rundir import read_jsonl


def assert_finished_like(whole: pathlib.Path, run_dir: pathlib.Path) -> None:
  """`run_dir` ended with `whole`'s result, every step logged once, and the same parameters."""
  want = json.loads((whole / 'result.json').read_text())
  got = json.loads((run_dir / 'result.json').read_text())
  assert got['val_loss'] == want['val_loss']
  assert [m['step'] for m in read_jsonl(run_dir / 'metrics.jsonl')] == list(
      range(1, want['steps'] + 1))
  # TensorBoard shows each step once, with the value the finished run's log holds.
  tb = summaries.read_scalars(run_dir / 'tensorboard')['train/loss']
  losses = [(m['step'], m['loss']) for m in read_jsonl(run_dir / 'metrics.jsonl')]
  assert [s for s, _ in tb] == [s for s, _ in losses]
  np.testing.assert_allclose([v for _, v in tb], [v for _, v in losses], rtol=1e-6)
  a, b = dlmjax.load_run(whole), dlmjax.load_run(run_dir)
  assert a.step == b.step == want['steps']
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
