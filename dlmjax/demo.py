"""`make demo`: trains a tiny AR model and a tiny masked diffusion model on the same data.

Both runs use configs/tiny.yaml (byte-level tokens of the standard library's source) with the
same unique-token budget, epochs, seed and backbone; only `objective` differs. Extra
`key=value` arguments are applied to both runs. Re-running resumes or reuses finished runs.
"""

from __future__ import annotations

import sys

from dlmjax import config as config_lib
from dlmjax import train
from dlmjax.errors import exit_on_user_error

PRESET = 'configs/tiny.yaml'


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  results = {}
  with exit_on_user_error():
    for objective in ('ar', 'mdm'):
      cfg = config_lib.load_config([PRESET], [*argv, f'objective={objective}'])
      cfg.run_dir = cfg.run_dir or f'runs/demo/{config_lib.default_run_dir(cfg).split("/")[-1]}'
      results[objective] = (cfg.run_dir, train.run(cfg))
  print()
  print(f'{"objective":10s} {"val nats/token":>15s} {"val bits/byte":>14s} {"best bits/byte":>15s}  run')
  for objective, (run_dir, r) in results.items():
    print(f'{objective:10s} {r["val_loss"]:15.4f} {r["val_bits_per_byte"]:14.4f} '
          f'{r["best_val_bits_per_byte"]:15.4f}  {run_dir}/result.json')
  print('(the diffusion number is an upper bound: its Monte Carlo ELBO)')


if __name__ == '__main__':
  main()
