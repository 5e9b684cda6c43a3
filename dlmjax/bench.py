"""`python -m dlmjax.bench [--json FILE] [--config configs/tiny.yaml] [key=value ...]`

Measures, in one run on whatever machine it runs on:
  matmul_gflops          best f32 (n x n) @ (n x n) jitted matmul over n in 512..2048
  train_tokens_per_s     the config's jitted train step (mdm), tokens/s, and the same for ar
  mfu_vs_matmul_peak     model FLOPs/s (6N + attention, dlmjax/flops.py) / matmul_gflops
  mdm_over_ar_step_time  step time of the mdm objective over that of ar (same model, batch)
  data_tokens_per_s      the input pipeline alone (store -> budget -> epochs -> packed batches)
  eval_items_per_s_*     multiple-choice scoring: code-cloze items (4 choices each) per second,
                         exact for ar, the eval.task_estimator with eval.task_samples for mdm
  sample_*_tokens_per_s  generation (dlmjax/sample.py) with the config's model shape, random
                         weights, 8 prompts of 32 tokens, 128 new tokens each: AR with and
                         without the KV cache, the DLM at 128 and at 32 denoising steps
  attention              every attention backend available on the platform, forward+backward,
                         per length, causal / bidirectional, unpacked / packed (dlmjax/kernels/
                         speed.py); attention_best_over_xla_L4096_bidir is xla's time over the
                         fastest kernel's at L=4096, bidirectional (GPU target >= 3)
The train step is fed real packed batches of the embedded corpus; times are medians over
repeats after compilation and a warm-up. The attention shapes default per platform (CPU:
L=256, 512 in float32; GPU/TPU: L=2048, 4096, the 1B preset's heads, bfloat16) and can be set
with --attn-* flags; --attn-only skips the other sections.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from dlmjax.errors import UserError, exit_on_user_error
from dlmjax.kernels import speed
from dlmjax.model import attention
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


def bench_eval(cfg, causal: bool, num_items: int = 128, repeats: int = 3) -> float:
  """Median code-cloze items per second of the task scorer (random weights: speed only)."""
  from flax import nnx

  from dlmjax.eval.likelihood import ContinuationScorer, merge_params
  from dlmjax.eval.tasks import code_cloze, harness
  from dlmjax.train import build_model

  tokenizer, _ = store_lib.prepare_data(cfg.data)
  graphdef, state = nnx.split(build_model(cfg))
  params = nnx.to_pure_dict(state)
  items = code_cloze.code_cloze(cfg.data.val_fraction)[:num_items]
  pairs = harness.encode_task(tokenizer, items, cfg.data.seq_len).pairs
  scorer = ContinuationScorer(lambda p: merge_params(graphdef, state, p), cfg, causal=causal,
                              estimator=cfg.eval.task_estimator, num_samples=cfg.eval.task_samples,
                              seed=cfg.eval.seed)
  scorer(params, pairs)  # compiles every bucket these items use
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    scorer(params, pairs)
    times.append(time.perf_counter() - t0)
  return len(items) / statistics.median(times)


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
      'eval_items_per_s_ar': bench_eval(cfg, causal=True),
      'eval_items_per_s_mdm': bench_eval(cfg, causal=False),
      'eval_task_estimator': cfg.eval.task_estimator,
      'eval_task_samples': cfg.eval.task_samples,
      **bench_sample(cfg),
  }


TARGETS = {  # project targets on the 2-core development machine
    'mfu_vs_matmul_peak': ('>=', 0.5),
    'mdm_over_ar_step_time': ('<=', 1.10),
    speed.RATIO_KEY: ('>=', 3.0),  # on one H100 (issue 7)
}


def _attention_shapes(args) -> speed.AttentionShapes:
  """The platform's default attention shapes with the --attn-* flags applied."""
  shapes = speed.AttentionShapes.for_platform(jax.default_backend())
  changes = {}
  try:
    if args.attn_lengths:
      changes['lengths'] = tuple(int(x) for x in args.attn_lengths.split(','))
    if args.attn_heads:
      changes['heads'], changes['kv_heads'], changes['head_dim'] = (
          int(x) for x in args.attn_heads.split(','))
  except ValueError as e:
    raise UserError(f'--attn-lengths / --attn-heads: {e}') from None
  if args.attn_tokens:
    changes['tokens'] = args.attn_tokens
  if args.attn_dtype:
    changes['dtype'] = args.attn_dtype
  shapes = dataclasses.replace(shapes, **changes)
  if shapes.heads % shapes.kv_heads or shapes.dtype not in ('float32', 'bfloat16'):
    raise UserError('--attn-heads H,K,Dh needs H a multiple of K; --attn-dtype float32 or '
                    'bfloat16')
  return shapes


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m dlmjax.bench', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--json', help='write the figures to this file')
  parser.add_argument('--config', default='configs/tiny.yaml')
  parser.add_argument('overrides', nargs='*', help='key=value config overrides')
  parser.add_argument('--attn-lengths', help='attention section: lengths, e.g. 2048,4096')
  parser.add_argument('--attn-tokens', type=int, help='attention section: tokens per call')
  parser.add_argument('--attn-heads', help='attention section: H,K,Dh, e.g. 32,8,64')
  parser.add_argument('--attn-dtype', help='attention section: float32 or bfloat16')
  parser.add_argument('--attn-backends', help='attention section: comma-separated backends '
                      '(default: all available on this platform)')
  parser.add_argument('--attn-only', action='store_true', help='run only the attention section')
  args = parser.parse_args(argv)
  with exit_on_user_error():
    shapes = _attention_shapes(args)
    backends = args.attn_backends.split(',') if args.attn_backends else None
    unknown = set(backends or []) - set(attention.BACKENDS) - {'tokamax'}
    if unknown or 'auto' in (backends or []):
      raise UserError(f'--attn-backends: {", ".join(sorted(unknown)) or "auto"} is not one of '
                      f'{", ".join(attention.BACKENDS[1:])}, tokamax')
    res = {}
    if not args.attn_only:
      cfg = config_lib.load_config([args.config], args.overrides)
      res = run(cfg)
      res['data_over_train'] = res['data_tokens_per_s'] / res['train_tokens_per_s']
    else:
      res = {'device': jax.devices()[0].device_kind, 'platform': jax.devices()[0].platform,
             'jax': jax.__version__, 'date': time.strftime('%Y-%m-%d')}
    att = speed.bench_attention(shapes, backends)
    res['attention'] = att
    res[speed.RATIO_KEY] = att[speed.RATIO_KEY]
    res[speed.RATIO_KEY + '_packed'] = att[speed.RATIO_KEY + '_packed']
  for key, value in res.items():
    if isinstance(value, float):
      target = TARGETS.get(key)
      mark = ''
      if target:
        ok = value >= target[1] if target[0] == '>=' else value <= target[1]
        mark = f'   (target {target[0]} {target[1]}: {"met" if ok else "NOT met"})'
      print(f'{key:34s} {value:,.4g}{mark}')
    elif value is None and key.startswith(speed.RATIO_KEY):
      print(f'{key:34s} not measured (needs a kernel backend on this machine and L=4096)')
    elif not isinstance(value, dict):
      print(f'{key:34s} {value}')
  print(f'\nattention ({", ".join(res["attention"]["backends"])}; '
        f'{res["attention"]["shapes"]}):\n{speed.format_table(res["attention"])}')
  if args.json:
    write_json_atomic(pathlib.Path(args.json), res)
    print(f'wrote {args.json}')


if __name__ == '__main__':
  main()
