"""Training: `python -m dlmjax.train [CONFIG.yaml ...] [key=value ...] [--dry-run]`.

One path: config -> data (token store, budget, epochs, packed batches) -> a pure train step,
jitted once with explicit shardings and a donated state -> metrics.jsonl, periodic
validation (eval.jsonl) and checkpoints -> result.json, written atomically last.

Re-running the same command resumes from the latest checkpoint (params, optimizer state,
step, rng and the data iterator's position), and does nothing if result.json exists.
SIGTERM or Ctrl-C saves a checkpoint and exits 0. A non-finite loss stops the run (exit 3)
and keeps the last good checkpoint; so does a full disk (exit 4). A damaged checkpoint is
set aside and the one before it used (dlmjax/checkpoint.py). docs/reliability.md lists the
faults and the tests that inject them.

The train step knows nothing about the objective: it calls `objective.loss(model, batch,
rng, cfg)` through `jax.value_and_grad`, as nanodo does; with `train.microbatches` > 1 it
accumulates the gradient over microbatches with the objective's loss weights.

On several devices the mesh comes from the `mesh.*` keys (dlmjax/sharding.py); on several
processes (a TPU pod slice, a SLURM job, or `distributed.*` keys) each process reads only
its rows of every batch, process 0 alone writes logs and results, and checkpoints are saved
by all processes together (orbax). A SIGTERM on any host stops every process after the same
step with one consistent checkpoint.

`--dry-run [--devices N] [--device h100|v5p|...]` trains nothing: it prints the estimated
memory per device (dlmjax/memory.py) of the configured run on that many devices.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from dlmjax import config as config_lib
from dlmjax import flops, memory, objectives, sharding, summaries
from dlmjax.checkpoint import Checkpointer, CorruptCheckpoint
from dlmjax.config import Config
from dlmjax.data import budget, pipeline, store as store_lib, tokenizer as tokenizer_lib
from dlmjax.errors import UserError, exit_on_user_error
from dlmjax.eval import likelihood
from dlmjax.eval import tasks as tasks_lib
from dlmjax.model.transformer import Transformer
from dlmjax.progress import StepProgress
from dlmjax.rundir import (RunDir, append_jsonl, training_evals, truncate_jsonl,
                           write_json_atomic, write_text_atomic)

EXIT_NONFINITE = 3
EXIT_DISK_FULL = 4


# ---------------------------------------------------------------------------------------
# The model, the optimizer and the pure train step.

def build_model(cfg: Config, *, abstract: bool = False) -> Transformer:
  make = lambda: Transformer(cfg.model, cfg.model.vocab_size, rngs=nnx.Rngs(params=cfg.seed))
  return nnx.eval_shape(make) if abstract else make()


def lr_schedule(cfg: Config, num_steps: int) -> optax.Schedule:
  o = cfg.optimizer
  warmup = o.warmup_steps or int(o.warmup_frac * num_steps)
  warmup = min(warmup, max(num_steps - 1, 0))
  final = o.lr * o.min_lr_ratio
  if o.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(num_steps, warmup + 1), final)
  ramp = optax.linear_schedule(0.0, o.lr, max(warmup, 1))
  if o.schedule == 'constant':
    return optax.join_schedules([ramp, optax.constant_schedule(o.lr)], [warmup])
  # warmup-stable-decay: hold the peak, then decay linearly over the last decay_frac.
  decay = max(int(o.decay_frac * num_steps), 1)
  stable = max(num_steps - decay - warmup, 0)
  return optax.join_schedules(
      [ramp, optax.constant_schedule(o.lr), optax.linear_schedule(o.lr, final, decay)],
      [warmup, warmup + stable])


def make_optimizer(cfg: Config, num_steps: int) -> tuple[optax.GradientTransformation, Any]:
  o = cfg.optimizer
  schedule = lr_schedule(cfg, num_steps)
  # Decay matrices and embeddings, not norm scales (the usual AdamW recipe).
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                      mask=decay_mask)
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw) if o.grad_clip else adamw
  return tx, schedule


def abstract_params(cfg: Config, mesh: jax.sharding.Mesh):
  """(graphdef, abstract NNX state, params) of the model `cfg` describes, without building
  it: params is the pure dict of ShapeDtypeStructs with their shardings on `mesh`, what a
  checkpoint's parameters restore onto (`Checkpointer.restore_params`)."""
  graphdef, state = nnx.split(build_model(cfg, abstract=True))
  shapes = nnx.to_pure_dict(state)
  logical = nnx.to_pure_dict(nnx.get_partition_spec(state))
  shardings = sharding.tree_shardings(logical, shapes, mesh)
  params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)
  return graphdef, state, params


@dataclasses.dataclass
class Trainer:
  """The jitted pieces of a run, built once from the config and the mesh."""

  cfg: Config
  mesh: jax.sharding.Mesh
  num_steps: int

  def __post_init__(self):
    cfg = self.cfg
    self.objective = objectives.get(cfg.objective)
    self.graphdef, self.abstract_params_state, params = abstract_params(cfg, self.mesh)
    self.tx, self.schedule = make_optimizer(cfg, self.num_steps)

    params_shape = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    param_sh = jax.tree.map(lambda a: a.sharding, params)
    opt_shape = jax.eval_shape(self.tx.init, params_shape)
    repl = sharding.replicated(self.mesh)
    opt_sh = optax.tree_map_params(self.tx, lambda _, s: s, opt_shape, param_sh,
                                   transform_non_params=lambda _: repl)
    self.state_shardings = {'params': param_sh, 'opt_state': opt_sh, 'step': repl, 'rng': repl}
    shapes = {'params': params_shape, 'opt_state': opt_shape,
              'step': jax.ShapeDtypeStruct((), jnp.int32),
              'rng': jax.ShapeDtypeStruct((2,), jnp.uint32)}
    self.abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes, self.state_shardings)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    sharding.check_batch_divides(cfg.train, self.mesh)

    self._init = jax.jit(self._init_state, out_shardings=self.state_shardings)
    self._step = jax.jit(self._train_step, in_shardings=(self.state_shardings, self.batch_sharding),
                         out_shardings=(self.state_shardings, repl), donate_argnums=0)

  def model(self, params: dict) -> nnx.Module:
    return likelihood.merge_params(self.graphdef, self.abstract_params_state, params)

  def _init_state(self) -> dict:
    model = build_model(self.cfg)
    params = nnx.to_pure_dict(nnx.split(model)[1])
    return {'params': params, 'opt_state': self.tx.init(params),
            'step': jnp.zeros((), jnp.int32), 'rng': jax.random.PRNGKey(self.cfg.seed)}

  def _train_step(self, state: dict, batch: dict) -> tuple[dict, dict]:
    # One key per step, derived from the step, so a resumed run draws the same masks.
    rng = jax.random.fold_in(state['rng'], state['step'])
    with sharding.activation_mesh(self.mesh):
      loss, metrics, grads = self._loss_and_grads(state['params'], batch, rng)
    updates, opt_state = self.tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=self.schedule(state['step']))
    new_state = {'params': params, 'opt_state': opt_state, 'step': state['step'] + 1,
                 'rng': state['rng']}
    return new_state, metrics

  def _loss_and_grads(self, params: dict, batch: dict, rng: jax.Array):
    """(loss, metrics, grads) of the objective on the global batch, in train.microbatches."""
    def loss_fn(params, batch, rng):
      return self.objective.loss(self.model(params), batch, rng, self.cfg)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    num_micro = self.cfg.train.microbatches
    if num_micro == 1:
      (loss, metrics), grads = grad_fn(params, batch, rng)
      metrics.pop(objectives.LOSS_WEIGHT, None)
      return loss, metrics, grads

    # Microbatch m takes rows m, m + M, m + 2M, ...: every device keeps its own rows (a
    # contiguous split would move rows between devices).
    micro = jax.tree.map(lambda x_BxL: sharding.constrain(
        x_BxL.reshape(-1, num_micro, x_BxL.shape[1]).swapaxes(0, 1),
        (None, 'batch', 'length')), batch)

    def weighted(mb, m):
      """One microbatch's gradient and metrics times its loss weight (counts unweighted)."""
      (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, m))
      weight = metrics.pop(objectives.LOSS_WEIGHT, jnp.ones((), jnp.float32))
      metrics = dict(metrics, loss=loss)
      metrics = {k: (v if k.startswith('n_') else weight * v).astype(jnp.float32)
                 for k, v in metrics.items()}
      grads = jax.tree.map(lambda g: weight * g.astype(jnp.float32), grads)
      return grads, metrics, weight.astype(jnp.float32)

    def accumulate(carry, xs):
      return jax.tree.map(jnp.add, carry, weighted(*xs)), None

    # The accumulator (f32) is sharded like the parameters, so that FSDP reduce-scatters
    # each microbatch's gradient instead of holding it whole.
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32),
                         jax.eval_shape(weighted, jax.tree.map(lambda x: x[0], micro), 0))
    zeros = (jax.lax.with_sharding_constraint(zeros[0], self.state_shardings['params']),
             *zeros[1:])
    (grad_sum, metric_sum, weight_sum), _ = jax.lax.scan(
        accumulate, zeros, (micro, jnp.arange(num_micro)))
    # sum_m(weight_m * loss_m) / sum_m(weight_m): the whole batch's loss, and its gradient.
    denom = jnp.maximum(weight_sum, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grad_sum, params)
    metrics = {k: v if k.startswith('n_') else v / denom for k, v in metric_sum.items()}
    return metrics['loss'], metrics, grads

  def init(self) -> dict:
    return self._init()

  def compile(self, local_batch_shapes: dict[str, tuple[int, ...]]) -> None:
    """Lowers and compiles the step before the loop (compile time is not step time)."""
    global_rows = self.cfg.train.batch_size
    batch = {k: jax.ShapeDtypeStruct((global_rows,) + s[1:], jnp.int32,
                                     sharding=self.batch_sharding)
             for k, s in local_batch_shapes.items()}
    self._step = self._step.lower(self.abstract_state, batch).compile(
        compiler_options(self.cfg, self.mesh))

  def step(self, state: dict, batch: dict) -> tuple[dict, dict]:
    return self._step(state, batch)


def compiler_options(cfg: Config, mesh: jax.sharding.Mesh) -> dict | None:
  """XLA options of the train step. On CPU, a remat policy needs its optimization barriers
  kept to the end: XLA:CPU expands them before CSE and scheduling, which then merge the
  recomputation back into the forward pass (memory_analysis: no saving at all); GPU and TPU
  keep them by themselves."""
  if cfg.model.remat != 'none' and mesh.devices.flat[0].platform == 'cpu':
    return {'xla_disable_hlo_passes': 'cse_barrier_expander'}
  return None


# ---------------------------------------------------------------------------------------
# Evaluation points, run set-up and the loop.

def eval_steps(cfg: Config, num_steps: int) -> set[int]:
  """Steps (1-based counts) after which validation runs; always includes the last."""
  if cfg.eval.every:
    points = set(range(cfg.eval.every, num_steps + 1, cfg.eval.every))
  else:
    points = {int(round(x)) for x in np.linspace(0, num_steps, cfg.eval.num_evals + 1)[1:]}
  return {p for p in points if p > 0} | {num_steps}


def task_steps(cfg: Config, evals_at: set[int]) -> set[int]:
  """The validation steps that also score `eval.tasks`: every task_every-th, and the last."""
  if not tasks_lib.split_specs(cfg.eval.tasks):
    return set()
  ordered = sorted(evals_at)
  return set(ordered[cfg.eval.task_every - 1::cfg.eval.task_every]) | {ordered[-1]}


def tokens_seen(data: pipeline.TrainData, step: int) -> int:
  """Training tokens (padding excluded) in the first `step` global batches."""
  return min(step * data.tokens_per_batch, data.total_tokens)


def resolve_run_dir(cfg: Config) -> RunDir:
  if not cfg.run_dir:
    cfg.run_dir = config_lib.default_run_dir(cfg)
  rd = RunDir(cfg.run_dir)
  conflict = config_lib.run_dir_conflict(rd.config, cfg)
  if conflict:
    raise UserError(conflict)
  if rd.config.is_file() and not cfg.model.vocab_size:
    cfg.model.vocab_size = config_lib.read_config_file(rd.config).model.vocab_size
  return rd


class StopRequest:
  """SIGTERM (preemption) and Ctrl-C ask the loop to save a checkpoint and exit after a step.

  One process: the signal handler sets a flag that the loop reads after each step. Several
  processes must all stop after the same step, or their checkpoint halves disagree: there
  jax's preemption sync manager (started by `jax.distributed.initialize`) catches SIGTERM on
  any host and the processes agree on the step to stop at
  (`multihost_utils.reached_preemption_sync_point`, asked after every step; it needs no
  device sync). Ctrl-C on one host becomes a SIGTERM to that host, to join the protocol.
  """

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.reason: str | None = None
    if threading.current_thread() is not threading.main_thread():
      return
    if self.multi_process:
      # Leave SIGTERM to the sync manager's own handler.
      signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    else:
      signal.signal(signal.SIGTERM, self._handler)
      signal.signal(signal.SIGINT, self._handler)

  def _handler(self, signum, _frame) -> None:
    self.reason = signal.Signals(signum).name

  def after_step(self, step: int) -> str | None:
    """Why to stop after `step` (e.g. 'SIGTERM'), or None; call once per step, on every process."""
    if self.multi_process and multihost_utils.reached_preemption_sync_point(step):
      self.reason = 'SIGTERM (on some host)'
    return self.reason


def mesh_label(mesh: jax.sharding.Mesh) -> str:
  return ' '.join(f'{k}={v}' for k, v in mesh.shape.items())


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


def run(cfg: Config) -> dict:
  """Trains (or resumes) the run described by `cfg`; returns its result dict."""
  t_start = time.time()
  rd = resolve_run_dir(cfg)
  if (done := rd.read_result()) is not None:
    _log(f'{rd.path}: complete (result.json exists); nothing to do')
    return done
  if rd.result.is_file() and jax.process_index() == 0:  # there, but not a JSON object
    aside = rd.result.with_name(f'result.json.damaged-{time.strftime("%Y%m%dT%H%M%S")}')
    os.replace(rd.result, aside)
    _log(f'warning: {rd.result} is damaged (not a JSON object); moved to {aside}; finishing '
         f'the run again from its last checkpoint')

  tokenizer, store = store_lib.prepare_data(cfg.data)
  if cfg.model.vocab_size and cfg.model.vocab_size < tokenizer.vocab_size:
    raise UserError(f'model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer '
                    f'vocabulary ({tokenizer.vocab_size})')
  cfg.model.vocab_size = cfg.model.vocab_size or tokenizer.vocab_size
  train_split = budget.train_split(store, cfg.data.unique_tokens, cfg.data.order_seed)
  val_split = budget.val_split(store)

  mesh = sharding.make_mesh(cfg.mesh)
  sharding.check_batch_divides(cfg.train, mesh)
  # Each process reads only the rows its devices hold (shard i of n of every global batch).
  shard, num_shards = sharding.process_rows(mesh, cfg.train.batch_size)
  data = pipeline.train_data(
      train_split, seq_len=cfg.data.seq_len, global_batch=cfg.train.batch_size,
      epochs=cfg.data.epochs, seed=cfg.seed, steps=cfg.train.steps,
      process_index=shard, process_count=num_shards, prefetch=cfg.data.prefetch,
      prefetch_workers=cfg.data.prefetch_workers)
  num_steps = data.num_steps

  if jax.process_index() == 0:
    rd.path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(rd.config, config_lib.to_yaml(cfg))
    if not rd.tokenizer.exists():
      tokenizer.save(rd.tokenizer)

  # No global `jax.set_mesh`: the step's in/out shardings carry the mesh, and the step is
  # traced under `sharding.activation_mesh` (constraints, and the abstract mesh for kernels).
  try:
    return _train(cfg, rd, tokenizer, train_split, val_split, data, mesh, num_steps, t_start)
  except Exception as e:
    if not _disk_full(e):
      raise
    last = Checkpointer(rd.checkpoints, read_only=True).latest_step()
    print(f'error: no space left on the device writing the run ({rd.path}); the last good '
          f'checkpoint is {f"step {last}" if last else "none yet"}. Free space and re-run the '
          f'same command to resume.', file=sys.stderr)
    sys.exit(EXIT_DISK_FULL)


def _disk_full(e: BaseException | None) -> bool:
  """Whether `e` or an exception it was raised from is a full disk or quota (orbax and
  tensorstore re-raise the OSError as their own types, with its message)."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(e) or 'Disk quota exceeded' in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _train(cfg, rd, tokenizer, train_split, val_split, data, mesh, num_steps, t_start) -> dict:
  trainer = Trainer(cfg, mesh, num_steps)
  vocab = cfg.model.vocab_size
  n_params = flops.num_params(cfg.model, vocab)
  n_active = flops.num_params(cfg.model, vocab, active=True)  # < n_params only for MoE
  flops_per_token = flops.train_flops_per_token(cfg.model, vocab, cfg.data.seq_len)
  peak = flops.device_peak_flops(cfg.model.dtype)

  ckpt = Checkpointer(rd.checkpoints, keep=cfg.checkpoint.keep)
  iterator = data.iterator()
  restored = ckpt.restore_latest(trainer.abstract_state)
  start = restored[0] if restored else 0
  wall_before = 0.0
  if start:
    _, state, data_state, meta = restored
    iterator.set_state(data_state)
    wall_before = float(meta.get('wall_s', 0.0))
    truncate_jsonl(rd.metrics, start)
    truncate_jsonl(rd.evals, start)
    _log(f'{rd.path}: resuming at step {start}/{num_steps}')
  else:
    state = trainer.init()
    for p in (rd.metrics, rd.evals):
      p.unlink(missing_ok=True)

  log = summaries.Summaries(rd, start, enabled=jax.process_index() == 0,
                            tensorboard=cfg.train.tensorboard, wandb_project=cfg.train.wandb,
                            config=config_lib.flatten(config_lib.to_dict(cfg)), name=cfg.name)

  val_batches = pipeline.val_batches(val_split, seq_len=cfg.data.seq_len,
                                     batch_size=cfg.eval.batch_size, max_tokens=cfg.eval.val_tokens)
  if not val_batches:
    raise UserError(f'data.corpus={cfg.data.corpus!r} has no validation tokens; '
                    f'raise data.val_fraction')
  # Empty rows appended to each batch change no total, and the draws of the real rows stay
  # the same (jax's counter-based random bits are a prefix of the longer batch's).
  val_batches = [pipeline.pad_rows(b, sharding.data_parallel_size(mesh)) for b in val_batches]
  val_bytes = likelihood.target_bytes(val_batches, tokenizer.token_bytes())
  val_device = [sharding.batch_from_full(b, mesh) for b in val_batches]
  nll_fn = likelihood.make_nll_fn(trainer.graphdef, trainer.abstract_params_state, cfg)
  evals_at = eval_steps(cfg, num_steps)
  tasks_at = task_steps(cfg, evals_at)
  suite = None
  if tasks_at:
    suite = tasks_lib.TaskSuite(tasks_lib.split_specs(cfg.eval.tasks), cfg, tokenizer,
                                trainer.model, causal=trainer.objective.causal)

  def run_eval(step: int) -> dict:
    res = likelihood.evaluate(nll_fn, state['params'], val_device, causal=trainer.objective.causal,
                              num_samples=cfg.eval.mdm_samples, seed=cfg.eval.seed,
                              num_bytes=val_bytes)
    rec = {'step': step, 'tokens_seen': tokens_seen(data, step),
           'epoch': data.epoch_of_step(step), **res}
    if step in tasks_at:
      t0 = time.time()
      rec['tasks'] = suite(state['params'])
      rec['tasks_s'] = time.time() - t0
    if jax.process_index() == 0:
      append_jsonl(rd.evals, rec)
    log.eval(rec)
    return rec

  ckpt_every = cfg.checkpoint.every
  stop = StopRequest()

  if start < num_steps:
    t0 = time.time()
    trainer.compile({k: (data.rows_per_process, cfg.data.seq_len)
                     for k in ('tokens', 'segment_ids', 'positions')})
    active = f' ({n_active / 1e6:.2f}M active)' if n_active < n_params else ''
    _log(f'{rd.path}: {cfg.objective}, {n_params / 1e6:.2f}M params{active}, '
         f'U={train_split.num_tokens:,} '
         f'tokens x {data.total_tokens / train_split.num_tokens:.4g} epochs = '
         f'{data.total_tokens:,} tokens in {num_steps} steps (compiled in {time.time() - t0:.1f}s)')
    _log(f'{rd.path}: mesh {mesh_label(mesh)} on {jax.device_count()} '
         f'{jax.devices()[0].platform} devices, {jax.process_count()} process(es)'
         + (f', {cfg.train.microbatches} microbatches' if cfg.train.microbatches > 1 else ''))

  saved = {'step': start}

  def save(step: int, last_metrics: dict | None, val_loss: float | None = None) -> None:
    if step == saved['step']:
      return  # e.g. a SIGTERM right after the eval checkpoint of this step
    if last_metrics is not None and not all(
        np.isfinite(float(last_metrics[k])) for k in ('loss', 'grad_norm')):
      return  # never checkpoint a diverged state (a non-finite gradient poisons the update)
    meta = {'step': step, 'tokens_seen': tokens_seen(data, step),
            'wall_s': wall_before + time.time() - t_start}
    ckpt.save(step, state, iterator.get_state(), meta, val_loss=val_loss)
    saved['step'] = step

  pending: list[dict] = []
  last_metrics = None
  window_t = time.time()
  window_tokens = 0
  progress = StepProgress(num_steps, start, enabled=cfg.train.progress and jax.process_index() == 0)
  with progress:
    for step in range(start + 1, num_steps + 1):
      # The iterator has handed out exactly `step` batches after this line, so its state
      # saved below resumes at the next one (grain prefetches ahead in a thread).
      batch = next(iterator)
      state, metrics = trainer.step(state, sharding.global_batch(batch, mesh))
      stopping = stop.after_step(step)
      pending.append(metrics)
      window_tokens += tokens_seen(data, step) - tokens_seen(data, step - 1)
      last_metrics = metrics

      if step % cfg.train.log_every == 0 or step == num_steps or stopping:
        host = jax.device_get(pending)
        pending = []
        dt = time.time() - window_t
        rec = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        if not math.isfinite(rec['loss']):
          # The window's first non-finite step: the one that diverged.
          bad = step - len(host) + 1 + next((i for i, m in enumerate(host)
                                             if not math.isfinite(float(m['loss']))),
                                            len(host) - 1)
          progress.close()
          last_good = ckpt.latest_step()
          ckpt.close()
          log.close()
          good = f'step {last_good}' if last_good else 'none yet'
          print(f'error: non-finite loss at step {bad} ({rd.path}); last good checkpoint: '
                f'{good}. Lower optimizer.lr or raise optimizer.warmup_frac.',
                file=sys.stderr)
          sys.exit(EXIT_NONFINITE)
        tps = window_tokens / max(dt, 1e-9)
        rec.update(step=step, tokens_seen=tokens_seen(data, step),
                   epoch=data.epoch_of_step(step),
                   tokens_per_s=tps, mfu=(tps * flops_per_token / peak) if peak else None)
        rec = {'step': rec.pop('step'), **rec}
        if jax.process_index() == 0:
          append_jsonl(rd.metrics, rec)
        log.train(rec)
        progress.update(step, rec)
        window_t, window_tokens = time.time(), 0

      if step in evals_at:
        jax.block_until_ready(state)  # queued train steps count as training time, not eval
        t_eval = time.time()
        ev = run_eval(step)
        progress.note(f'step {step}: val {ev["val_loss"]:.4f} nats/token, '
                      f'{ev["val_bits_per_byte"]:.4f} bits/byte'
                      + ''.join(f', {name} acc {m["acc"]:.3f} (norm {m["acc_norm"]:.3f})'
                                for name, m in ev.get('tasks', {}).items()))
        window_t += time.time() - t_eval  # eval time is not training throughput
        # Every eval is checkpointed with its loss (checkpoint.every adds steps between
        # them): the best one is kept, to be rescored at the end.
        save(step, last_metrics, val_loss=ev['val_loss'])
      if ckpt_every and step % ckpt_every == 0:
        save(step, last_metrics)
      if stopping and step < num_steps:
        save(step, last_metrics)
        iterator.close()
        ckpt.close()
        log.close()
        progress.close()
        _log(f'{rd.path}: {stopping} at step {step}; checkpoint saved, re-run the same '
             f'command to resume')
        return {'status': 'interrupted', 'step': step}

  save(num_steps, last_metrics)
  iterator.close()  # the prefetching thread or worker processes (data.prefetch_workers)
  evals = training_evals(rd.evals)
  final = evals[-1]
  best = min(evals, key=lambda r: r['val_loss'])
  rescored = None
  if not trainer.objective.causal:
    rescored = rescore(cfg, ckpt, trainer, best['step'], nll_fn, val_device, val_bytes)
  ckpt.close()
  log.close()

  result = {
      'objective': cfg.objective,
      'name': cfg.name,
      'params': n_params,
      'active_params': n_active,
      'unique_tokens': train_split.num_tokens,
      # As configured; with an explicit train.steps, the epochs those steps amount to.
      'epochs': data.total_tokens / train_split.num_tokens if cfg.train.steps else cfg.data.epochs,
      'train_tokens': data.total_tokens,
      'steps': num_steps,
      'flops': flops_per_token * data.total_tokens,
      'val_loss': final['val_loss'],
      'val_loss_stderr': final['val_loss_stderr'],
      'val_bits_per_byte': final['val_bits_per_byte'],
      'best_val_loss': best['val_loss'],
      'best_val_bits_per_byte': best['val_bits_per_byte'],
      'best_step': best['step'],
      'seq_len': cfg.data.seq_len,
      'batch_size': cfg.train.batch_size,
      'seed': cfg.seed,
      'wall_s': wall_before + time.time() - t_start,
  }
  if rescored is not None:
    result['best_rescored'] = rescored
  with_tasks = [r for r in evals if 'tasks' in r]
  if with_tasks:
    result['tasks'] = with_tasks[-1]['tasks']  # at the last step (task_steps includes it)
  if jax.process_index() == 0:
    write_json_atomic(rd.result, result)
  _log(f'{rd.path}: done. val {final["val_loss"]:.4f} nats/token '
       f'({final["val_bits_per_byte"]:.4f} bits/byte), best {best["val_bits_per_byte"]:.4f} '
       f'bits/byte at step {best["step"]}; {rd.result}')
  return result


def rescore(cfg: Config, ckpt: Checkpointer, trainer: Trainer, step: int, nll_fn, val_device,
            val_bytes: int) -> dict | None:
  """The validation loss of the best checkpoint (step `step`) with fresh Monte Carlo samples.

  A diffusion run's best step is the minimum of noisy estimates, so its own estimate is
  biased low; the same checkpoint scored with an independent seed (eval.seed + 1) is not.
  None when the checkpoint is gone (e.g. removed by hand) or fails its manifest.
  """
  ckpt.wait()
  if step not in ckpt.all_steps():
    _log(f'best checkpoint (step {step}) not found: its loss is not rescored')
    return None
  try:
    state, _, _ = ckpt.restore(step, trainer.abstract_state)
  except CorruptCheckpoint as e:
    _log(f'{e}: the best checkpoint\'s loss is not rescored')
    return None
  seed = cfg.eval.seed + 1
  res = likelihood.evaluate(nll_fn, state['params'], val_device, causal=False,
                            num_samples=cfg.eval.mdm_samples, seed=seed, num_bytes=val_bytes)
  return {'step': step, 'val_loss': res['val_loss'], 'val_loss_stderr': res['val_loss_stderr'],
          'val_bits_per_byte': res['val_bits_per_byte'], 'samples': res['val_samples'],
          'seed': seed}


def dry_run(cfg: Config, num_devices: int | None = None, device: str | None = None) -> str:
  """What `--dry-run` prints: the run's shape and its memory per device (dlmjax/memory.py)."""
  num_devices = num_devices or jax.device_count()
  vocab = cfg.model.vocab_size or tokenizer_lib.planned_vocab_size(cfg.data)
  budget = memory.device_bytes(device)
  label = device or jax.devices()[0].device_kind
  mesh = memory.abstract_mesh(cfg, num_devices)
  sharding.check_batch_divides(cfg.train, mesh)
  est = memory.estimate(cfg, vocab, num_devices, device)
  m, t = cfg.model, cfg.train
  lines = [
      f'{cfg.name or "run"}: {cfg.objective}, {flops.num_params(m, vocab) / 1e9:.3g}B params, '
      f'batch {t.batch_size} x {cfg.data.seq_len} in {t.microbatches} microbatch(es), '
      f'{m.dtype} compute / {m.param_dtype} weights, remat {m.remat}, attention {m.attention}',
      f'mesh {mesh_label(mesh)} on {num_devices} x {label} ({memory.gb(budget)} each): '
      f'{est.tokens_per_device:,} tokens per device and microbatch',
      'memory per device (estimate; formulas in dlmjax/memory.py):']
  lines += [f'  {name:12s} {memory.gb(value):>10s}' for name, value in est.parts().items()]
  lines.append(memory.verdict(cfg, vocab, num_devices, device))
  return '\n'.join(lines)


def _split_flags(argv: list[str]) -> tuple[dict, list[str]]:
  """Separates `--dry-run [--devices N] [--device KIND]` from configs and overrides."""
  import argparse

  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument('--dry-run', action='store_true')
  parser.add_argument('--devices', type=int)
  parser.add_argument('--device', choices=sorted(memory.DEVICES))
  try:
    flags, rest = parser.parse_known_args(argv)
  except SystemExit:
    raise UserError(f'bad flags in {" ".join(argv)}; --devices takes a number, --device one of '
                    f'{", ".join(sorted(memory.DEVICES))}') from None
  if (flags.devices or flags.device) and not flags.dry_run:
    raise UserError('--devices and --device only go with --dry-run')
  return vars(flags), rest


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ('-h', '--help') for a in argv):
    print(__doc__)
    return
  with exit_on_user_error():
    flags, rest = _split_flags(argv)
    cfg = config_lib.parse_args(rest)
    if flags['dry_run']:
      print(dry_run(cfg, flags['devices'], flags['device']))
      return
    # Before anything touches a device: a pod slice or a SLURM job becomes one jax program.
    sharding.initialize_distributed(cfg.distributed)
    run(cfg)


if __name__ == '__main__':
  main()
