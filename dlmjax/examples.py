"""Runs made on the spot for the notebooks (notebooks/) and for trying the API on a CPU.

    from dlmjax import examples
    run = examples.tiny_run('mdm')  # trains once into runs/examples/tiny-mdm, then loads it
    out = examples.tiny_grid()      # the demo grid, shrunk to seconds per run, and its report

Each is the real path (`dlmjax.train`, `python -m experiments.grid run` and `report`), with the
tiny preset on a small budget; a second call finds the finished runs and trains nothing.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the repository: configs/, notebooks/
TINY = ROOT / 'configs' / 'tiny.yaml'

# About 20 s of training on one CPU core: enough for a model that writes Python-like text.
TINY_OVERRIDES = ('data.unique_tokens=50000', 'data.epochs=4', 'eval.num_evals=4',
                  'eval.val_tokens=8192', 'eval.tasks=', 'train.progress=false')

# demo-tiny with a 32-wide one-layer model: its shape (budgets, epochs, objectives, tasks), not
# its numbers, in 3 minutes on 2 CPU cores.
GRID_OVERRIDES = ('model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
                  'data.seq_len=64', 'eval.num_evals=4', 'eval.val_tokens=2048',
                  'eval.batch_size=16', 'eval.tasks=code_cloze', 'eval.task_items=40',
                  'eval.task_samples=2', 'train.progress=false')


def tiny_run(objective: str = 'mdm', run_dir: str | pathlib.Path | None = None,
             overrides: Sequence[str] = (), root: str | pathlib.Path = 'runs/examples'):
  """A tiny run of `objective` ('ar' or 'mdm'), trained if not complete, loaded (a `Run`)."""
  from dlmjax import config as config_lib, load_run, train
  if not TINY.is_file():
    raise FileNotFoundError(f'{TINY} is missing: install dlmjax from a clone of its repository '
                            f'(pip install -e .), which has configs/')
  run_dir = pathlib.Path(run_dir or pathlib.Path(root) / f'tiny-{objective}')
  cfg = config_lib.load_config([str(TINY)], [*TINY_OVERRIDES, f'objective={objective}',
                                             *overrides, f'run_dir={run_dir}'])
  train.run(cfg)
  return load_run(run_dir)


def tiny_grid(out: str | pathlib.Path = 'runs/examples/demo-tiny', grid: str = 'demo-tiny',
              overrides: Sequence[str] = GRID_OVERRIDES, workers: int = 2) -> pathlib.Path:
  """`grid` run through the grid runner with `overrides` into `out`, and its report; `out`."""
  from experiments import grid as grid_lib
  out = pathlib.Path(out)
  for command in ('run', 'report'):
    argv = [command, grid, '--out', str(out), *(['--workers', str(workers)] if command == 'run'
                                                else []), *overrides]
    if grid_lib.main(argv) != 0:
      raise RuntimeError(f'python -m experiments.grid {" ".join(argv)} failed; see '
                         f'{out}/runs/*/train.log')
  return out
