"""`python -m dlmjax.bench [--json FILE] [--markdown FILE] [--config configs/tiny.yaml] [key=value ...]`

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
  data                   data preparation at scale: tokenization MB/s of text, the flat store
                         in one process against the Beam pipeline with 1 and all-core workers
                         (data.beam_scaling: target >= 1.7 for 2 workers), then the sharded
                         store's loader at L = 2048 (target >= 2M tokens/s per host) and its
                         memory at the end of each of three epochs; on the .py files of
                         site-packages with a 4096-id BPE by default (--data-* flags; [beam])
  step                   the papers' 1B preset (configs/paper.yaml + configs/models/1b.yaml,
                         bf16 compute, L 2048) on an accelerator: step time, tokens/s, MFU
                         against the device's data-sheet peak and MDM / AR step time, for
                         each `--step-variant` (key=value overrides of the preset). Skipped,
                         with a line saying so, on CPU; `--dry-run` runs the same code path
                         there with small shapes (MFU then against the measured matmul peak).
The tiny train step is fed real packed batches of the embedded corpus, the 1B step synthetic
packed rows (it needs no tokenizer); times are medians over repeats after compilation and a
warm-up. The attention shapes default per platform (CPU: L=256, 512 in float32; GPU/TPU:
L=2048, 4096, the 1B preset's heads, bfloat16) and can be set with --attn-* flags;
--sections picks sections. `--gpu-tests` first runs the GPU tests (`pytest -m gpu`) and adds
their outcome; `make bench-gpu` does all of it on a GPU machine and writes runs/bench-gpu.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import jax
import numpy as np

from dlmjax import config as config_lib
from dlmjax import flops, sharding
from dlmjax.data import budget, pipeline, store as store_lib
from dlmjax.data.tokenizer import BOS_ID
from dlmjax.errors import UserError, exit_on_user_error
from dlmjax.kernels import speed
from dlmjax.model import attention
from dlmjax.rundir import write_json_atomic, write_text_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]


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


def site_packages_corpus() -> str:
  """Every .py file of this Python's site-packages: a corpus of ~150 MB wherever the bench
  runs (the embedded stdlib, 12 MB, is too small to time a pipeline's start-up away)."""
  import sysconfig

  return f'files:{sysconfig.get_paths()["purelib"]}/**/*.py'


def bench_tokenize(corpus_spec: str, tokenizer: str, workers: int) -> dict:
  """Data preparation at scale (issue targets in TARGETS): tokenization MB/s of text by the
  single-process flat store and by the Beam pipeline (dlmjax/data/prepare.py) with 1 and
  `workers` DirectRunner processes, each one core, on the same corpus; then the loader's
  tokens/s per host from the shards at L = 2048 with packing (B = 64, two prefetched
  batches), and its resident memory at the end of each of three epochs, then the same
  through `workers` worker processes (data.prefetch_workers). `tokenizer`: bpe
  (a 4096-id BPE trained first by `train_tokenizer`), byte, or a tokenizer directory."""
  import importlib.util

  if importlib.util.find_spec('apache_beam') is None:
    return {'skipped': "needs the [beam] extra: pip install -e '.[beam]'"}
  from dlmjax.data import corpus as corpus_lib, prepare
  from dlmjax.data import tokenizer as tokenizer_lib

  corpus = corpus_lib.open_corpus(corpus_spec)
  out = {'corpus': corpus_spec, 'tokenizer': tokenizer, 'workers': workers}
  with tempfile.TemporaryDirectory(prefix='dlmjax-bench-data-') as tmp:
    tokenizer_dir = None
    if tokenizer == 'bpe':
      tokenizer_dir = str(pathlib.Path(tmp) / 'tokenizer')
      prepare.train_tokenizer(corpus_spec, tokenizer_dir, vocab_size=4096)
    elif tokenizer != 'byte':
      tokenizer_dir = tokenizer
    tok = (tokenizer_lib.load_tokenizer(tokenizer_dir) if tokenizer_dir
           else tokenizer_lib.ByteTokenizer())
    flat_dir = pathlib.Path(tmp) / 'flat'
    flat_dir.mkdir()
    saved = os.environ.get('TOKENIZERS_PARALLELISM')
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one core, like a pipeline worker
    t0 = time.perf_counter()
    store_lib.build_store(flat_dir, corpus, tok, 0.02)
    seconds = time.perf_counter() - t0
    if saved is None:
      del os.environ['TOKENIZERS_PARALLELISM']
    else:
      os.environ['TOKENIZERS_PARALLELISM'] = saved
    mb = int(store_lib.TokenStore(flat_dir).doc_bytes.sum()) / 1e6
    out['text_mb'] = mb
    out['store_mb_per_s'] = mb / seconds
    for w in sorted({1, workers}):
      t0 = time.perf_counter()
      sharded = prepare.tokenize(corpus_spec, pathlib.Path(tmp) / f'shards-{w}',
                                 tokenizer_dir=tokenizer_dir, workers=w)
      out[f'beam_mb_per_s_w{w}'] = mb / (time.perf_counter() - t0)
    out['beam_scaling'] = out[f'beam_mb_per_s_w{workers}'] / out['beam_mb_per_s_w1']
    split = budget.train_split(sharded, 0, 0)
    out['loader_tokens_per_s'], out['loader_rss_mb_by_epoch'] = _time_loader(split, 0)
    out['loader_workers_tokens_per_s'], _ = _time_loader(split, workers)
    out['shards'] = len(sharded.index['shards'])
  return out


def _time_loader(split, prefetch_workers: int) -> tuple[float, list[float]]:
  """Tokens/s of three epochs of `split` at L = 2048, B = 64 through the training iterator
  (a prefetching thread, or `prefetch_workers` worker processes), and this process's
  resident memory at the end of each epoch."""
  import psutil

  steps_per_epoch = -(-split.num_tokens // (64 * 2048))
  data = pipeline.TrainData(split, seq_len=2048, global_batch=64, epochs=3, seed=0,
                            steps=3 * steps_per_epoch + 1,  # the first batch is not timed
                            prefetch_workers=prefetch_workers)
  proc = psutil.Process()
  it = data.iterator()
  next(it)
  rss, n, t0 = [], 0, time.perf_counter()
  for read in range(2, data.num_steps + 1):  # batches read so far
    n += next(it)['tokens'].size
    if read % steps_per_epoch == 0 and len(rss) < 3:
      rss.append(round(proc.memory_info().rss / 2**20, 1))
  seconds = time.perf_counter() - t0
  it.close()
  return n / seconds, rss


def machine() -> dict:
  """Where and with what the figures were measured (docs/benchmarks.md quotes these)."""
  import flax
  import jaxlib
  return {
      'device': jax.devices()[0].device_kind,
      'cpu': _cpu_model(),
      'platform': jax.devices()[0].platform,
      'num_devices': jax.device_count(),
      'jax': jax.__version__,
      'jaxlib': jaxlib.__version__,
      'flax': flax.__version__,
      'python': platform.python_version(),
      'date': time.strftime('%Y-%m-%d'),
      'command': ' '.join(['python -m dlmjax.bench', *sys.argv[1:]]),
  }


def _cpu_model() -> str:
  """The host CPU's model name (Linux), else the platform's processor string."""
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return f'{line.split(":", 1)[1].strip()} x {os.cpu_count()}'
  except OSError:
    pass
  return platform.processor() or 'unknown'


# ---------------------------------------------------------------------------------------
# The accelerator training step: the papers' 1B preset at sequence 2048.

STEP_PRESET = ('configs/paper.yaml', 'configs/models/1b.yaml')
STEP_VOCAB = 50304  # the paper preset's BPE vocabulary (data.bpe_vocab_size)
# `--dry-run`: the same code path with CPU-sized shapes.
STEP_DRY_RUN = ('model.d_model=64', 'model.n_layers=2', 'model.n_heads=4', 'model.n_kv_heads=2',
                'model.d_ff=128', 'model.vocab_size=512', 'data.seq_len=64')


def synthetic_batches(rows: int, seq_len: int, vocab_size: int, count: int = 4,
                      seed: int = 0) -> list[dict]:
  """`count` packed [rows, seq_len] batches of random documents (1-4 per row, the last row of
  each batch ending in padding), shaped like the pipeline's, for steps that need no corpus."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(count):
    seg = np.zeros((rows, seq_len), np.int32)
    pos = np.zeros((rows, seq_len), np.int32)
    for r in range(rows):
      n_docs = int(rng.integers(1, 5))
      cuts = np.sort(rng.choice(np.arange(1, seq_len), size=n_docs - 1, replace=False))
      bounds = [0, *cuts.tolist(), seq_len]
      end = seq_len - seq_len // 8 if r == rows - 1 else seq_len
      for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        b = min(b, end)
        if a < b:
          seg[r, a:b] = i + 1
          pos[r, a:b] = np.arange(b - a)
    tokens = np.where(seg > 0, rng.integers(4, vocab_size, (rows, seq_len)), 0).astype(np.int32)
    out.append({'tokens': tokens, 'segment_ids': seg, 'positions': pos})
  return out


def step_plan(variants: list[list[str]]) -> list[tuple[list[str], tuple[str, ...]]]:
  """What is measured: the first variant with both objectives (their ratio is the target),
  the others with mdm only (the objective the study spends its compute on)."""
  return [(v, ('mdm', 'ar') if i == 0 else ('mdm',)) for i, v in enumerate(variants)]


def step_config(variant: list[str], *, dry_run: bool) -> config_lib.Config:
  files = [str(ROOT / f) for f in STEP_PRESET]
  overrides = [f'model.vocab_size={STEP_VOCAB}', 'train.progress=false',
               *(STEP_DRY_RUN if dry_run else ()), *variant]
  return config_lib.load_config(files, overrides)


def bench_train_step(variants: list[list[str]], *, rows_per_device: int, dry_run: bool = False,
                     repeats: int = 5, steps_per_repeat: int = 5) -> dict:
  """Step time, tokens/s and MFU of the 1B preset for each variant (mdm and ar for the first,
  mdm only for the others), against the data-sheet peak (measured matmul peak on CPU)."""
  platform_ = jax.devices()[0].platform
  if platform_ == 'cpu' and not dry_run:
    return {'skipped': 'no accelerator (cpu): MFU is against a device data-sheet peak; '
                       '--dry-run runs the same code path with small shapes'}
  out = {'rows_per_device': rows_per_device, 'dry_run': dry_run, 'runs': []}
  for variant, objectives_ in step_plan(variants):
    cfg = step_config(variant, dry_run=dry_run)
    cfg.train.batch_size = rows_per_device * jax.device_count()
    batches = synthetic_batches(cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size)
    fpt = flops.train_flops_per_token(cfg.model, cfg.model.vocab_size, cfg.data.seq_len)
    peak = flops.device_peak_flops(cfg.model.dtype)
    tokens = cfg.train.batch_size * cfg.data.seq_len
    for objective in objectives_:
      rec = {'variant': ' '.join(variant) or 'preset', 'objective': objective,
             'dtype': cfg.model.dtype, 'param_dtype': cfg.model.param_dtype,
             'remat': cfg.model.remat, 'attention': cfg.model.attention,
             'seq_len': cfg.data.seq_len, 'global_rows': cfg.train.batch_size,
             'params': flops.num_params(cfg.model, cfg.model.vocab_size),
             'flops_per_token': fpt, 'peak_flops': peak}
      try:
        t = bench_step(cfg, objective, batches, repeats=repeats, steps_per_repeat=steps_per_repeat)
        rec.update(step_s=t, tokens_per_s=tokens / t, mfu=tokens / t * fpt / peak)
      except jax.errors.JaxRuntimeError as e:  # e.g. out of memory: record it, go on
        rec['error'] = str(e).splitlines()[0][:300]
      out['runs'].append(rec)
      print(_step_line(rec), flush=True)
  base = {r['objective']: r for r in out['runs'] if r['variant'] == out['runs'][0]['variant']}
  if all('step_s' in base.get(o, {}) for o in ('ar', 'mdm')) and not dry_run:
    out['mfu'] = base['mdm']['mfu']
    out['mdm_over_ar_step_time'] = base['mdm']['step_s'] / base['ar']['step_s']
  return out


def _step_line(rec: dict) -> str:
  head = f'  step {rec["objective"]:3s} {rec["variant"]:32s}'
  if 'error' in rec:
    return f'{head} failed: {rec["error"]}'
  return (f'{head} {rec["step_s"] * 1e3:8.1f} ms  {rec["tokens_per_s"]:10,.0f} tokens/s  '
          f'MFU {rec["mfu"]:.3f}')


# ---------------------------------------------------------------------------------------
# The GPU tests, run first by `--gpu-tests`.

def run_gpu_tests() -> dict:
  """Runs `pytest -m gpu` in a subprocess; counts and failing test ids from its junit XML."""
  with tempfile.TemporaryDirectory() as tmp:
    junit = pathlib.Path(tmp) / 'gpu-tests.xml'
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p',
                           'no:cacheprovider', f'--junitxml={junit}', str(ROOT / 'tests')],
                          cwd=ROOT, capture_output=True, text=True)
    res = {'exit_code': proc.returncode, 'tail': proc.stdout[-2000:] + proc.stderr[-1000:]}
    if junit.exists():
      res.update(junit_summary(junit.read_text()))
  if proc.returncode == 5:
    res['note'] = 'no test is marked gpu'
  return res


def junit_summary(xml_text: str) -> dict:
  """Passed / failed / error / skipped counts and the ids of failing tests in a junit XML."""
  root = ET.fromstring(xml_text)
  counts = {'passed': 0, 'failed': 0, 'errors': 0, 'skipped': 0}
  failing = []
  for case in root.iter('testcase'):
    outcome = 'passed'
    for child in case:
      outcome = {'failure': 'failed', 'error': 'errors', 'skipped': 'skipped'}.get(child.tag,
                                                                                outcome)
    counts[outcome] += 1
    if outcome in ('failed', 'errors'):
      failing.append(f'{case.get("classname")}::{case.get("name")}')
  return {**counts, 'failing': failing}


# ---------------------------------------------------------------------------------------
# Output.

SECTIONS = ('tiny', 'step', 'attention', 'data')

TARGETS = {  # project targets (docs/benchmarks.md)
    'mfu_vs_matmul_peak': ('>=', 0.5),  # tiny step on the 2-core CPU development machine
    'mdm_over_ar_step_time': ('<=', 1.10),
    speed.RATIO_KEY: ('>=', 3.0),  # on one H100 (issue 7)
    'step.mfu': ('>=', 0.5),  # the 1B step on one H100 in bf16
    'step.mdm_over_ar_step_time': ('<=', 1.05),
    'data.beam_scaling': ('>=', 1.7),  # 2 workers over 1, on the 2-core machine (issue 14)
    'data.loader_tokens_per_s': ('>=', 2e6),  # per host, L = 2048, from the shards
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


def _target_mark(key: str, value: float) -> str:
  target = TARGETS.get(key)
  if not target:
    return ''
  ok = value >= target[1] if target[0] == '>=' else value <= target[1]
  return f'target {target[0]} {target[1]}: {"met" if ok else "NOT met"}'


def to_markdown(res: dict) -> str:
  """The bench result as markdown: the machine, the GPU tests, the tiny-preset figures and
  the 1B step table."""
  lines = ['# dlmjax bench', '',
           f'{res["device"]} x {res["num_devices"]} ({res["platform"]}; host {res["cpu"]}), '
           f'{res["date"]}; '
           f'jax {res["jax"]}, jaxlib {res["jaxlib"]}, flax {res["flax"]}, Python {res["python"]}',
           '', f'command: `{res["command"]}`', '']
  if 'tests' in res:
    t = res['tests']
    lines += ['## GPU tests (`pytest -m gpu`)', '',
              f'{t.get("passed", 0)} passed, {t.get("failed", 0)} failed, {t.get("errors", 0)} '
              f'errors, {t.get("skipped", 0)} skipped (exit code {t["exit_code"]})'
              + (f'; {t["note"]}' if t.get('note') else ''), '']
    lines += [f'- failing: `{f}`' for f in t.get('failing', [])]
    lines += [''] if t.get('failing') else []
  figures = [(k, v) for k, v in res.items() if isinstance(v, float)]
  if figures:
    name = res.get('config', {}).get('name', 'tiny')
    lines += [f'## Figures (`{name}` preset)', '', '| figure | value | target |', '|---|---|---|']
    lines += [f'| `{k}` | {v:,.4g} | {_target_mark(k, v)} |' for k, v in figures]
    lines.append('')
  step = res.get('step')
  if step:
    lines += ['## Train step: the papers\' 1B preset'
              + (' (dry run: small shapes)' if step.get('dry_run') else ''), '']
    if 'skipped' in step:
      lines += [f'skipped: {step["skipped"]}', '']
    else:
      lines += [f'{step["rows_per_device"]} rows of {step["runs"][0]["seq_len"]} tokens per '
                f'device; MFU = model FLOPs (6N + attention) / peak '
                f'({step["runs"][0]["peak_flops"] / 1e9:,.0f} GFLOP/s).', '',
                '| variant | objective | dtype / param dtype | remat | step | tokens/s | MFU |',
                '|---|---|---|---|---|---|---|']
      for r in step['runs']:
        cells = ([f'{r["step_s"] * 1e3:.1f} ms', f'{r["tokens_per_s"]:,.0f}', f'{r["mfu"]:.3f}']
                 if 'step_s' in r else [f'failed: {r["error"]}', '', ''])
        lines.append(f'| {r["variant"]} | {r["objective"]} | {r["dtype"]} / {r["param_dtype"]} '
                     f'| {r["remat"]} | ' + ' | '.join(cells) + ' |')
      lines.append('')
      lines += [f'- `step.{k}` {step[k]:.3f} ({_target_mark("step." + k, step[k])})'
                for k in ('mfu', 'mdm_over_ar_step_time') if k in step]
      lines.append('')
  if res.get('data'):
    lines += ['## Data preparation (`--sections data`)', '', '| figure | value | target |',
              '|---|---|---|']
    lines += [f'| `data.{k}` | {f"{v:,.4g}" if isinstance(v, float) else v} | '
              f'{_target_mark("data." + k, v) if isinstance(v, float) else ""} |'
              for k, v in res['data'].items()]
    lines.append('')
  if 'attention' in res:
    att = res['attention']
    lines += [f'## Attention ({", ".join(att["backends"])}; {att["shapes"]})', '',
              speed.format_table(att), '']
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m dlmjax.bench', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--json', help='write the figures to this file')
  parser.add_argument('--markdown', help='write them as markdown tables to this file')
  parser.add_argument('--config', default='configs/tiny.yaml', help='the tiny-step preset')
  parser.add_argument('--sections', default=','.join(SECTIONS),
                      help='comma-separated: tiny (tiny preset: step, data, eval, sampling), '
                           'step (1B preset), attention (every backend), data (tokenization '
                           'and the sharded loader)')
  parser.add_argument('--step-variant', action='append', default=None, metavar='"K=V K=V"',
                      help='overrides of the 1B preset, one measurement each (repeatable); '
                           'the first is also measured with objective ar')
  parser.add_argument('--step-rows', type=int, default=8, help='1B step: rows per device')
  parser.add_argument('--dry-run', action='store_true',
                      help='run the 1B step section on any device, with small shapes')
  parser.add_argument('--gpu-tests', action='store_true', help='run `pytest -m gpu` first')
  parser.add_argument('--attn-lengths', help='attention section: lengths, e.g. 2048,4096')
  parser.add_argument('--attn-tokens', type=int, help='attention section: tokens per call')
  parser.add_argument('--attn-heads', help='attention section: H,K,Dh, e.g. 32,8,64')
  parser.add_argument('--attn-dtype', help='attention section: float32 or bfloat16')
  parser.add_argument('--attn-backends', help='attention section: comma-separated backends '
                      '(default: all available on this platform)')
  parser.add_argument('--attn-only', action='store_true', help='--sections attention')
  parser.add_argument('--data-corpus', default=None,
                      help='data section: the corpus to tokenize, a data.corpus spec (default: '
                           'the .py files of site-packages)')
  parser.add_argument('--data-tokenizer', default='bpe',
                      help='data section: bpe (4096 ids, trained first), byte, or a tokenizer '
                           'directory')
  parser.add_argument('--data-workers', type=int, default=0,
                      help='data section: DirectRunner processes to compare with one (0: cores)')
  parser.add_argument('overrides', nargs='*', help='key=value overrides of the tiny preset')
  args = parser.parse_args(argv)
  sections = set(args.sections.split(','))
  with exit_on_user_error():
    shapes = _attention_shapes(args)
    backends = args.attn_backends.split(',') if args.attn_backends else None
    unknown = set(backends or []) - set(attention.BACKENDS) - {'tokamax'}
    if unknown or 'auto' in (backends or []):
      raise UserError(f'--attn-backends: {", ".join(sorted(unknown)) or "auto"} is not one of '
                      f'{", ".join(attention.BACKENDS[1:])}, tokamax')
    if args.attn_only:
      sections = {'attention'}
    if not sections or sections - set(SECTIONS):
      raise UserError(f'--sections {args.sections}: choose from {", ".join(SECTIONS)}')
    tiny_cfg = config_lib.load_config([args.config], args.overrides)
    step_variants = [v.split() for v in (args.step_variant or [''])]
    for variant in step_variants:  # a bad key fails now, not after the other sections
      step_config(variant, dry_run=args.dry_run)
    tests = None
    if args.gpu_tests:
      # Before this process touches a device: jax here would take the GPU's memory first.
      tests = run_gpu_tests()
      print(f'gpu tests: {tests.get("passed", 0)} passed, {tests.get("failed", 0)} failed, '
            f'{tests.get("errors", 0)} errors (exit code {tests["exit_code"]})', flush=True)
    res = machine()
    if tests is not None:
      res['tests'] = tests
    if 'tiny' in sections:
      res.update(run(tiny_cfg))
      res['data_over_train'] = res['data_tokens_per_s'] / res['train_tokens_per_s']
    if 'step' in sections:
      print('train step, 1B preset:', flush=True)
      res['step'] = bench_train_step(step_variants, rows_per_device=args.step_rows,
                                     dry_run=args.dry_run)
    if 'data' in sections:
      print('data preparation:', flush=True)
      res['data'] = bench_tokenize(args.data_corpus or site_packages_corpus(),
                                   args.data_tokenizer, args.data_workers or os.cpu_count() or 1)
    if 'attention' in sections:
      att = speed.bench_attention(shapes, backends)
      res['attention'] = att
      res[speed.RATIO_KEY] = att[speed.RATIO_KEY]
      res[speed.RATIO_KEY + '_packed'] = att[speed.RATIO_KEY + '_packed']
  for key, value in res.items():
    if isinstance(value, float):
      mark = _target_mark(key, value)
      print(f'{key:34s} {value:,.4g}' + (f'   ({mark})' if mark else ''))
    elif value is None and key.startswith(speed.RATIO_KEY):
      print(f'{key:34s} not measured (needs a kernel backend on this machine and L=4096)')
    elif not isinstance(value, dict):
      print(f'{key:34s} {value}')
  data = res.get('data', {})
  for key, value in data.items():
    mark = _target_mark('data.' + key, value) if isinstance(value, float) else ''
    shown = f'{value:,.4g}' if isinstance(value, float) else value
    print(f'{"data." + key:34s} {shown}' + (f'   ({mark})' if mark else ''))
  step = res.get('step', {})
  if 'skipped' in step:
    print(f'{"train step (1B preset)":34s} skipped: {step["skipped"]}')
  for key in ('mfu', 'mdm_over_ar_step_time'):
    if key in step:
      print(f'{"step." + key:34s} {step[key]:.4g}   ({_target_mark("step." + key, step[key])})')
  if 'attention' in res:
    print(f'\nattention ({", ".join(res["attention"]["backends"])}; '
          f'{res["attention"]["shapes"]}):\n{speed.format_table(res["attention"])}')
  if args.json:
    write_json_atomic(pathlib.Path(args.json), res)
    print(f'wrote {args.json}')
  if args.markdown:
    write_text_atomic(pathlib.Path(args.markdown), to_markdown(res))
    print(f'wrote {args.markdown}')


if __name__ == '__main__':
  main()
