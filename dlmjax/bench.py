"""`python -m dlmjax.bench [--json FILE] [--config configs/tiny.yaml] [key=value ...]`

Measures, in one run on whatever machine it runs on:
  matmul_gflops          best f32 (n x n) @ (n x n) jitted matmul over n in 512..2048
  train_tokens_per_s     the config's jitted train step (mdm), tokens/s, and the same for ar
  mfu_vs_matmul_peak     model FLOPs/s (6N + attention, dlmjax/flops.py) / matmul_gflops
  mdm_over_ar_step_time  step time of the mdm objective over that of ar (same model, batch)
  data_tokens_per_s      the input pipeline alone (store -> budget -> epochs -> packed batches)
  sample_*_tokens_per_s  generation (dlmjax/sample.py) with the config's model shape, random
                         weights, 8 prompts of 32 tokens, 128 new tokens each: AR with and
                         without the KV cache, the DLM at 128 and at 32 denoising steps
The train step is fed real packed batches of the embedded corpus; times are medians over
repeats after compilation and a warm-up.
"""

from __future__ import annotations

import argparse
import pathlib
import platform
import statistics
import time

import jax
import numpy as np

from dlmjax import config as config_lib
from dlmjax import flops, sharding
from dlmjax.data import budget, pipeline, store as store_lib
from dlmjax.data.tokenizer import BOS_ID
from dlmjax.errors import exit_on_user_error
from dlmjax.rundir import write_json_atomic


def bench_matmul() -> float:
  return max(flops.measure_matmul_flops(n, 'float32', seconds=1.0) for n in (512, 1024, 2048))


def _data(cfg):
  tokenizer, store = store_lib.prepare_data(cfg.data)
  cfg.model.vocab_size = cfg.model.vocab_size or tokenizer.vocab_size
  split = budget.train_split(store, cfg.data.unique_tokens, cfg.data.order_seed)
  return pipeline.train_data(split, seq_len=cfg.data.seq_len, global_batch=cfg.train.batch_size,
                             epochs=cfg.data.epochs, seed=cfg.seed, steps=cfg.train.steps,
                             prefetch=cfg.data.prefetch)


def bench_data(cfg, seconds: float = 3.0) -> float:
  cfg = config_lib.from_dict(config_lib.to_dict(cfg))
  cfg.train.steps = 10**6  # a stream longer than the measurement, whatever the budget
  it = _data(cfg).iterator()
  next(it)
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    batch = next(it)
    n += batch['tokens'].size
  return n / (time.perf_counter() - t0)


def bench_step(cfg, objective: str, batches: list[dict], repeats: int = 5,
               steps_per_repeat: int = 10) -> float:
  """Median seconds per train step of `objective`."""
  from dlmjax.train import Trainer

  cfg = config_lib.from_dict(config_lib.to_dict(cfg))
  cfg.objective = objective
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = Trainer(cfg, mesh, num_steps=1000)
  state = trainer.init()
  trainer.compile({k: v.shape for k, v in batches[0].items()})
  device_batches = [sharding.global_batch(b, mesh) for b in batches]
  for b in device_batches[:3]:  # warm-up
    state, m = trainer.step(state, b)
  jax.block_until_ready(m)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for i in range(steps_per_repeat):
      state, m = trainer.step(state, device_batches[i % len(device_batches)])
    jax.block_until_ready(m)
    times.append((time.perf_counter() - t0) / steps_per_repeat)
  return statistics.median(times)


def bench_sample(cfg, batch: int = 8, prompt_len: int = 32, new_tokens: int = 128,
                 repeats: int = 3) -> dict[str, float]:
  """Generated tokens/s of each sampler, median over repeats (compilation excluded)."""
  from dlmjax import sample
  from dlmjax.train import build_model

  model = build_model(cfg)
  prompts = np.random.default_rng(0).integers(4, cfg.model.vocab_size, (batch, prompt_len))
  prompts = [[BOS_ID] + p.tolist()[1:] for p in prompts]
  runs = {'sample_ar_tokens_per_s': dict(causal=True),
          'sample_ar_nocache_tokens_per_s': dict(causal=True, kv_cache=False),
          f'sample_dlm_{new_tokens}_steps_tokens_per_s': dict(causal=False),
          'sample_dlm_32_steps_tokens_per_s': dict(causal=False, steps=32)}
  out = {}
  for name, kwargs in runs.items():
    seconds = [sample.sample(model, prompts, max_new_tokens=new_tokens, stop_at_eos=False,
                             history=False, **kwargs).seconds for _ in range(repeats)]
    out[name] = batch * new_tokens / statistics.median(seconds)
  return out


def run(cfg) -> dict:
  data = _data(cfg)
  it = data.iterator()
  batches = [next(it) for _ in range(8)]
  peak = bench_matmul()
  t_ar = bench_step(cfg, 'ar', batches)
  t_mdm = bench_step(cfg, 'mdm', batches)
  tokens = cfg.train.batch_size * cfg.data.seq_len
  fpt = flops.train_flops_per_token(cfg.model, cfg.model.vocab_size, cfg.data.seq_len)
  tps = tokens / t_mdm
  return {
      'device': jax.devices()[0].device_kind,
      'platform': jax.devices()[0].platform,
      'num_devices': jax.device_count(),
      'jax': jax.__version__,
      'python': platform.python_version(),
      'date': time.strftime('%Y-%m-%d'),
      'config': {'name': cfg.name, 'd_model': cfg.model.d_model, 'n_layers': cfg.model.n_layers,
                 'seq_len': cfg.data.seq_len, 'batch_size': cfg.train.batch_size,
                 'dtype': cfg.model.dtype},
      'matmul_gflops': peak / 1e9,
      'flops_per_token': fpt,
      'step_s_ar': t_ar,
      'step_s_mdm': t_mdm,
      'train_tokens_per_s': tps,
      'train_tokens_per_s_ar': tokens / t_ar,
      'mfu_vs_matmul_peak': tps * fpt / peak,
      'mfu_vs_matmul_peak_ar': tokens / t_ar * fpt / peak,
      'mdm_over_ar_step_time': t_mdm / t_ar,
      'data_tokens_per_s': bench_data(cfg),
      **bench_sample(cfg),
  }


TARGETS = {  # project targets on the 2-core development machine
    'mfu_vs_matmul_peak': ('>=', 0.5),
    'mdm_over_ar_step_time': ('<=', 1.10),
}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m dlmjax.bench', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--json', help='write the figures to this file')
  parser.add_argument('--config', default='configs/tiny.yaml')
  parser.add_argument('overrides', nargs='*', help='key=value config overrides')
  args = parser.parse_args(argv)
  with exit_on_user_error():
    cfg = config_lib.load_config([args.config], args.overrides)
    res = run(cfg)
  res['data_over_train'] = res['data_tokens_per_s'] / res['train_tokens_per_s']
  for key, value in res.items():
    if isinstance(value, float):
      target = TARGETS.get(key)
      mark = ''
      if target:
        ok = value >= target[1] if target[0] == '>=' else value <= target[1]
        mark = f'   (target {target[0]} {target[1]}: {"met" if ok else "NOT met"})'
      print(f'{key:34s} {value:,.4g}{mark}')
    elif not isinstance(value, dict):
      print(f'{key:34s} {value}')
  if args.json:
    write_json_atomic(pathlib.Path(args.json), res)
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
