"""dlmjax: autoregressive vs masked diffusion language models under data constraints, in JAX.

    import dlmjax
    run = dlmjax.load_run('runs/tiny-mdm-u200000-e20-s0')
"""

import sys as _sys

__version__ = '0.1.0'

if 'jax' not in _sys.modules:  # glibc malloc settings only take effect before jax starts
  from dlmjax import cpu as _cpu
  _cpu.tune_for_host()


def __getattr__(name):
  # Lazy, so `import dlmjax.config` does not pull in jax and flax.
  if name in ('load_run', 'Run'):
    from dlmjax import run
    return getattr(run, name)
  raise AttributeError(f'module dlmjax has no attribute {name!r}')


__all__ = ['load_run', 'Run']
