"""The run configuration: one typed dataclass tree, YAML presets and `key=value` overrides.

    cfg = load_config(['configs/tiny.yaml'], ['objective=mdm', 'data.epochs=20'])

YAML files list only what differs from the defaults below and are merged left to right;
overrides come last. Every key is checked against the tree: an unknown key, a value of the
wrong type or an impossible combination raises `ConfigError` naming the key, and the
command-line tools turn that into one line and exit code 2.

Integer fields also accept the suffixes K, M, B and T (`data.unique_tokens=1.5B`), because
token budgets are how the papers speak.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import pathlib
import typing
from typing import Any

import yaml

from dlmjax.errors import ConfigError, UserError


@dataclasses.dataclass
class ModelConfig:
  """Decoder-only transformer shape (RMSNorm, RoPE, SwiGLU, GQA), shared by AR and DLM."""

  d_model: int = 128
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int = 0  # 0: as many as n_heads (no grouping)
  head_dim: int = 0  # 0: d_model // n_heads
  d_ff: int = 512
  vocab_size: int = 0  # 0: the tokenizer's vocabulary size
  rope_theta: float = 10000.0
  qk_norm: bool = False
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  init_std: float = 0.02
  dtype: str = 'float32'  # compute dtype: float32 on CPU, bfloat16 on accelerators
  param_dtype: str = 'float32'  # master weights
  # backend in dlmjax/model/attention.py: auto (per platform, the fastest that passed its
  # check; xla on CPU) | xla | pallas | cudnn | triton (GPU) | splash (TPU)
  attention: str = 'auto'
  # Activation rematerialisation in the backward pass (dlmjax/model/transformer.py REMAT):
  # none (keep everything) | dots (keep the weight matmuls' outputs, recompute the rest) |
  # block (keep only each block's input, recompute the block)
  remat: str = 'none'
  # Tokens per chunk of the fused output projection + cross-entropy of the training loss
  # (no BxLxV float32 logits are held); 0: chunks of at most ~256 MiB of float32 logits.
  ce_chunk_tokens: int = 0
  attn_dropout: float = 0.0
  mlp_dropout: float = 0.0
  resid_dropout: float = 0.0
  # Mixture of experts (dlmjax/model/moe.py): num_experts > 0 replaces every block's MLP.
  num_experts: int = 0
  experts_per_token: int = 0  # top-k routing
  moe_d_ff: int = 0  # each expert's SwiGLU width; 0: d_ff
  moe_dispatch: str = 'dropless'  # dropless (grouped matmul) | capacity (tokens over C dropped)
  moe_capacity_factor: float = 1.25  # capacity: C = ceil(k L factor / num_experts) per row
  moe_lb_weight: float = 0.01  # load-balancing auxiliary loss (Switch/GShard)
  moe_z_weight: float = 0.001  # router z-loss (ST-MoE)

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def dh(self) -> int:
    return self.head_dim or self.d_model // self.n_heads


@dataclasses.dataclass
class DataConfig:
  """Where the tokens come from and how they are budgeted, repeated and packed."""

  # stdlib | files:GLOB | jsonl:PATH:FIELD | parquet:GLOB:FIELD | tfds:DIR:SPLIT:FIELD |
  # seqio:MODULE:TASK:SPLIT:FEATURE | mix:W*SPEC|W*SPEC... | store:DIR (dlmjax/data/corpus.py)
  corpus: str = 'stdlib'
  tokenizer: str = 'byte'  # byte | bpe (trained on the training split, saved with the run)
  bpe_vocab_size: int = 4096
  seq_len: int = 128
  unique_tokens: int = 0  # U; 0: every training token the corpus holds
  epochs: float = 1.0  # E; the run sees exactly round(U * E) training tokens
  val_fraction: float = 0.02  # share of documents held out (by a hash of their name)
  # tokenizer=bpe: share of documents, by the next slice of the same hash, that train the
  # tokenizer and are never trained on (dlmjax/data/store.py)
  tokenizer_fraction: float = 0.02
  order_seed: int = 0  # document order that makes budgets nested; not the run seed
  cache_dir: str = ''  # token stores; '': $DLMJAX_CACHE or ~/.cache/dlmjax
  prefetch: int = 2  # batches prepared ahead of the train step
  # 0: one background thread computes them; N: N worker processes (grain's mp_prefetch), each
  # `prefetch` batches ahead. The thread serves 6.7M tokens/s at L=2048 (docs/benchmarks.md).
  prefetch_workers: int = 0


@dataclasses.dataclass
class ARConfig:
  """Options of the `ar` objective: the regularisers of the data-constrained ablations."""

  input_mask_rate: float = 0.0  # replace input tokens by the mask token (targets unchanged)
  param_noise_std: float = 0.0  # Gaussian noise added to the weights for each step


@dataclasses.dataclass
class MDMConfig:
  """Options of the `mdm` objective (masked diffusion, the papers' recipe by default)."""

  eps: float = 1e-3  # training t ~ U(eps, 1); evaluation always uses mdm.EVAL_EPS = 1e-3
  schedule: str = 'linear'  # linear (alpha_t = 1 - t) | cosine
  antithetic: bool = False  # low-discrepancy t across the batch (MDLM)
  # time: each masked token weighted by the schedule's -alpha'_t / (1 - alpha_t) (1/t) |
  # realised: MegaDLMs' variance control, >= 1 masked target per row, weight n / n_masked
  weighting: str = 'time'
  loss_norm: str = 'token'  # token: sum / non-pad tokens in batch | sequence: per row
  # Share of rows truncated to a random length: 1%, as SMDM, LLaDA and MegaDLMs train.
  random_length_frac: float = 0.01


@dataclasses.dataclass
class OptimizerConfig:
  lr: float = 2e-3
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  schedule: str = 'cosine'  # cosine | wsd | constant
  warmup_steps: int = 0  # 0: warmup_frac of the run
  warmup_frac: float = 0.05
  min_lr_ratio: float = 0.1  # final lr / peak lr
  decay_frac: float = 0.2  # wsd: share of the run spent decaying


@dataclasses.dataclass
class TrainConfig:
  batch_size: int = 32  # global batch, in sequences of data.seq_len tokens
  steps: int = 0  # 0: ceil(U * E / (batch_size * seq_len))
  # Gradient accumulation: the global batch runs as this many microbatches of
  # batch_size / microbatches rows, with the same objective as one big batch (activation
  # memory shrinks with it; the MDM's random draws change, their distribution does not).
  microbatches: int = 1
  log_every: int = 10
  progress: bool = True  # progress bar with ETA when stderr is a terminal
  tensorboard: bool = True  # event files in RUN_DIR/tensorboard (dlmjax/summaries.py)
  wandb: str = ''  # a Weights & Biases project to log to as well; '' off (needs `wandb`)


@dataclasses.dataclass
class EvalConfig:
  every: int = 0  # steps between validation evals; 0: num_evals points spread over the run
  num_evals: int = 24
  val_tokens: int = 65536  # validation tokens scored each time (a fixed subset)
  batch_size: int = 32
  mdm_samples: int = 4  # K Monte Carlo samples of (t, mask) for the diffusion ELBO
  seed: int = 0  # fixed, so the same checkpoint always gives the same number
  # Multiple-choice tasks scored during training (dlmjax/eval/tasks), e.g. 'code_cloze'.
  tasks: str = ''  # comma-separated task specs; '' none
  task_every: int = 4  # tasks run at every N-th validation eval and always at the last
  task_items: int = 0  # items per task, the first N of its fixed order; 0: all
  task_estimator: str = 'llada'  # diffusion estimator of log p(continuation | context)
  task_samples: int = 4  # its Monte Carlo samples per (context, continuation) pair
  # Generation tasks (doctest_completion): tokens generated per problem, at most half the window.
  gen_tokens: int = 128


@dataclasses.dataclass
class MeshConfig:
  """Device mesh sizes (dlmjax/sharding.py); -1 takes the remaining devices.

  data x fsdp x tensor x expert devices form one slice (ICI); dcn_data slices (TPU
  multislice, or groups of GPU hosts) add an outer data-parallel level over the data-centre
  network, so the mesh's `data` axis has dcn_data x data entries. The default shards
  parameters, gradients and optimizer state over every device (FSDP, as MaxText's default):
  the 8B preset's 118 GB of f32 weights and AdamW moments then fit 80 GB devices from 8 up.
  """

  data: int = 1
  fsdp: int = -1
  tensor: int = 1
  expert: int = 1
  dcn_data: int = 1


@dataclasses.dataclass
class DistributedConfig:
  """Multi-process start-up (`jax.distributed.initialize`, dlmjax/sharding.py).

  Left empty, a TPU pod slice and a SLURM job (more than one task) are detected from their
  environment; elsewhere (or to override) give all three keys on every process.
  """

  coordinator: str = ''  # host:port of process 0
  num_processes: int = 0
  process_id: int = -1


@dataclasses.dataclass
class CheckpointConfig:
  every: int = 0  # steps between checkpoints besides those at each eval; 0: evals only
  keep: int = 2


@dataclasses.dataclass
class Config:
  objective: str = 'mdm'  # ar | mdm (dlmjax/objectives)
  seed: int = 0
  run_dir: str = ''  # '': runs/<name>-<objective>-u<U>-e<E>-s<seed>
  name: str = ''  # used in the default run_dir; '': the YAML files' stems joined by '-'
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  ar: ARConfig = dataclasses.field(default_factory=ARConfig)
  mdm: MDMConfig = dataclasses.field(default_factory=MDMConfig)
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)


# ---------------------------------------------------------------------------------------
# Loading, merging and coercion.

_SUFFIX = {'K': 10**3, 'M': 10**6, 'B': 10**9, 'G': 10**9, 'T': 10**12}


def coerce(key: str, value: Any, typ: Any) -> Any:
  """Returns `value` converted to the field type `typ`, or raises ConfigError."""
  def bad(expect: str) -> ConfigError:
    return ConfigError(f'config key {key!r} expects {expect}, got {value!r}')

  if typ is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in ('true', 'false', 'yes', 'no', '1', '0'):
      return value.lower() in ('true', 'yes', '1')
    raise bad('true or false')
  if typ is int:
    if isinstance(value, bool):
      raise bad('an integer')
    if isinstance(value, int):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    if isinstance(value, str):
      s = value.strip().replace('_', '')
      mult = 1
      if s and s[-1].upper() in _SUFFIX:
        mult, s = _SUFFIX[s[-1].upper()], s[:-1]
      try:
        x = float(s) * mult
      except ValueError:
        raise bad('an integer (suffixes K, M, B, T allowed)') from None
      if math.isfinite(x) and x == round(x):
        return int(round(x))
    raise bad('an integer (suffixes K, M, B, T allowed)')
  if typ is float:
    if isinstance(value, bool):
      raise bad('a number')
    if isinstance(value, (int, float)):
      return float(value)
    if isinstance(value, str):
      try:
        return float(value)
      except ValueError:
        pass
    raise bad('a number')
  if typ is str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
      return str(value)
    raise bad('a string')
  raise TypeError(f'unsupported config field type {typ!r} at {key}')


@functools.cache  # a dataclass's fields never change; the grid registry asks ~10^4 times
def _field_types(cls: type) -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, candidates: list[str]) -> ConfigError:
  close = difflib.get_close_matches(key, candidates, n=1)
  hint = f' (did you mean {close[0]!r}?)' if close else ''
  return ConfigError(f'unknown config key {key!r}{hint}')


def _all_keys(cls: type = Config, prefix: str = '') -> list[str]:
  keys = []
  for name, typ in _field_types(cls).items():
    if dataclasses.is_dataclass(typ):
      keys += _all_keys(typ, f'{prefix}{name}.')
    else:
      keys.append(f'{prefix}{name}')
  return keys


def set_key(obj: Any, path: str, value: Any) -> None:
  """Sets the dotted `path` of dataclass `obj` to `value` (a scalar or a nested dict)."""
  parts = path.split('.')
  target = obj
  for i, part in enumerate(parts):
    types_ = _field_types(type(target))
    if part not in types_:
      raise _unknown_key(path, _all_keys())
    typ = types_[part]
    sub = '.'.join(parts[: i + 1])
    if i < len(parts) - 1:
      if not dataclasses.is_dataclass(typ):
        raise _unknown_key(path, _all_keys())
      target = getattr(target, part)
      continue
    if dataclasses.is_dataclass(typ):
      if not isinstance(value, dict):
        raise ConfigError(f'config key {sub!r} is a section; give its keys, e.g. {sub}.KEY=...')
      for k, v in value.items():
        set_key(obj, f'{sub}.{k}', v)
    else:
      setattr(target, part, coerce(sub, value, typ))


def read_yaml(path: str) -> dict:
  p = pathlib.Path(path)
  if not p.is_file():
    raise ConfigError(f'config file {path!r} does not exist')
  stat = p.stat()
  return copy.deepcopy(_parse_yaml(path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)  # keyed on the file's mtime and size: an edited file is re-read
def _parse_yaml(path: str, mtime_ns: int, size: int) -> dict:
  p = pathlib.Path(path)
  try:
    data = yaml.safe_load(p.read_text()) or {}
  except yaml.YAMLError as e:
    raise ConfigError(f'config file {path!r} is not valid YAML: {str(e).splitlines()[0]}') from None
  if not isinstance(data, dict):
    raise ConfigError(f'config file {path!r} must hold a mapping of keys')
  return data


def parse_override(arg: str) -> tuple[str, Any]:
  """`'data.epochs=20'` -> `('data.epochs', 20)`; values are read as YAML scalars."""
  if '=' not in arg:
    raise ConfigError(f'expected key=value or a .yaml file, got {arg!r}')
  key, raw = arg.split('=', 1)
  if not key.strip():
    raise ConfigError(f'override {arg!r} has no key before its "="')
  try:
    value = yaml.safe_load(raw) if raw else ''
  except yaml.YAMLError:
    value = raw
  return key.strip(), raw if value is None else value


def load_config(files: list[str] = (), overrides: list[str] = (), *, check: bool = True) -> Config:
  """Builds the Config from YAML presets (merged left to right) and `key=value` overrides.

  Keys and types are always checked; `check=False` skips the combination checks of
  `validate` (the grid registry lists FLOPs of presets that cannot train yet).
  """
  cfg = Config()
  for f in files:
    for key, value in read_yaml(f).items():
      try:
        set_key(cfg, str(key), value)
      except ConfigError as e:
        raise ConfigError(f'{f}: {e}') from None
  for arg in overrides:
    set_key(cfg, *parse_override(arg))
  if not cfg.name and files:
    cfg.name = '-'.join(pathlib.Path(f).stem for f in files)
  if check:
    validate(cfg)
  return cfg


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
  """A command line's YAML files and its `key=value` overrides, each in their order."""
  files = [a for a in argv if a.endswith(('.yaml', '.yml')) and '=' not in a]
  return files, [a for a in argv if a not in files]


def parse_args(argv: list[str]) -> Config:
  """Splits a command line into YAML files and `key=value` overrides and loads them."""
  return load_config(*split_args(argv))


def from_dict(data: dict) -> Config:
  """Rebuilds a Config written by `to_dict` (e.g. a run directory's config.yaml)."""
  cfg = Config()
  for key, value in data.items():
    set_key(cfg, str(key), value)
  validate(cfg)
  return cfg


def read_config_file(path: str | pathlib.Path) -> Config:
  """The Config a run directory's config.yaml holds (written by `to_yaml`)."""
  return from_dict(read_yaml(str(path)))


def to_dict(cfg: Config) -> dict:
  return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
  return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# ---------------------------------------------------------------------------------------
# Validation of combinations (types were checked while loading).

DTYPES = ('float32', 'bfloat16')


def _check(cond: bool, key: str, msg: str) -> None:
  if not cond:
    raise ConfigError(f'config key {key!r}: {msg}')


def _one_of(cfg_value: str, key: str, allowed: typing.Iterable[str]) -> None:
  allowed = tuple(allowed)
  _check(cfg_value in allowed, key, f'{cfg_value!r} is not one of {", ".join(allowed)}')


def validate(cfg: Config) -> None:
  """Raises ConfigError naming the key of the first impossible setting."""
  from dlmjax import objectives  # the registry of names; imported late to avoid a cycle
  from dlmjax.model import attention, transformer

  m, d, t = cfg.model, cfg.data, cfg.train
  _one_of(cfg.objective, 'objective', objectives.names())
  for key in ('d_model', 'n_layers', 'n_heads', 'd_ff'):
    _check(getattr(m, key) > 0, f'model.{key}', 'must be positive')
  _check(m.n_kv_heads >= 0 and m.head_dim >= 0 and m.vocab_size >= 0, 'model.n_kv_heads',
         'n_kv_heads, head_dim and vocab_size must be >= 0 (0 picks the default)')
  _check(m.head_dim > 0 or m.d_model % m.n_heads == 0, 'model.n_heads',
         f'd_model={m.d_model} is not divisible by n_heads={m.n_heads}; set model.head_dim')
  _check(m.n_heads % m.kv_heads == 0, 'model.n_kv_heads',
         f'n_heads={m.n_heads} is not a multiple of n_kv_heads={m.kv_heads}')
  _check(m.dh % 2 == 0, 'model.head_dim', f'head dim {m.dh} must be even for RoPE')
  _one_of(m.dtype, 'model.dtype', DTYPES)
  _one_of(m.param_dtype, 'model.param_dtype', DTYPES)
  _one_of(m.attention, 'model.attention', attention.BACKENDS)
  _check(m.attention != 'cudnn' or m.dtype == 'bfloat16', 'model.attention',
         f'cudnn attention needs model.dtype=bfloat16, not {m.dtype}')
  _check(m.attn_dropout == 0.0 or m.attention in ('auto', 'xla'), 'model.attn_dropout',
         f'attention dropout needs model.attention=xla (or auto); {m.attention} has none')
  _one_of(m.remat, 'model.remat', transformer.REMAT)
  _check(m.ce_chunk_tokens >= 0, 'model.ce_chunk_tokens', 'must be >= 0 (0: automatic)')
  for key in ('attn_dropout', 'mlp_dropout', 'resid_dropout'):
    _check(0.0 <= getattr(m, key) < 1.0, f'model.{key}', 'must be in [0, 1)')
  _check(m.num_experts >= 0, 'model.num_experts', 'must be >= 0 (0: dense MLP)')
  if m.num_experts:
    _check(1 <= m.experts_per_token <= m.num_experts, 'model.experts_per_token',
           f'must be in [1, num_experts={m.num_experts}]')
    _check(m.moe_d_ff >= 0, 'model.moe_d_ff', 'must be >= 0 (0: d_ff)')
    _one_of(m.moe_dispatch, 'model.moe_dispatch', ('dropless', 'capacity'))
    _check(m.moe_capacity_factor > 0, 'model.moe_capacity_factor', 'must be positive')
    _check(m.moe_lb_weight >= 0 and m.moe_z_weight >= 0, 'model.moe_lb_weight',
           'moe_lb_weight and moe_z_weight must be >= 0')
    _check(cfg.mesh.expert in (-1, 1) or m.num_experts % cfg.mesh.expert == 0, 'mesh.expert',
           f'{cfg.mesh.expert} shards do not divide model.num_experts={m.num_experts}')

  _check(d.corpus == 'stdlib'
         or d.corpus.startswith(('files:', 'jsonl:', 'parquet:', 'tfds:', 'seqio:', 'mix:',
                                 'store:')),
         'data.corpus', f'{d.corpus!r} is not stdlib, files:GLOB, jsonl:PATH:FIELD, '
         f'parquet:GLOB:FIELD, tfds:DIR:SPLIT:FIELD, seqio:MODULE:TASK:SPLIT:FEATURE, '
         f'mix:W*SPEC|W*SPEC... or store:DIR')
  _one_of(d.tokenizer, 'data.tokenizer', ('byte', 'bpe'))
  _check(d.bpe_vocab_size >= 300, 'data.bpe_vocab_size', 'must be at least 300')
  _check(d.seq_len >= 2, 'data.seq_len', 'must be at least 2')
  _check(d.unique_tokens >= 0, 'data.unique_tokens', 'must be >= 0 (0: the whole corpus)')
  _check(d.epochs > 0, 'data.epochs', 'must be positive')
  _check(0.0 < d.val_fraction < 1.0, 'data.val_fraction', 'must be in (0, 1)')
  _check(0.0 < d.tokenizer_fraction < 1.0 - d.val_fraction, 'data.tokenizer_fraction',
         f'must be in (0, 1 - data.val_fraction={d.val_fraction})')
  _check(d.prefetch >= 0, 'data.prefetch', 'must be >= 0')
  _check(d.prefetch_workers >= 0, 'data.prefetch_workers', 'must be >= 0 (0: a thread)')
  _check(not d.prefetch_workers or d.prefetch >= 1, 'data.prefetch',
         'must be >= 1 with data.prefetch_workers')

  _check(0.0 <= cfg.ar.input_mask_rate < 1.0, 'ar.input_mask_rate', 'must be in [0, 1)')
  _check(cfg.ar.param_noise_std >= 0.0, 'ar.param_noise_std', 'must be >= 0')
  _check(0.0 < cfg.mdm.eps < 1.0, 'mdm.eps', 'must be in (0, 1)')
  _one_of(cfg.mdm.schedule, 'mdm.schedule', ('linear', 'cosine'))
  _one_of(cfg.mdm.loss_norm, 'mdm.loss_norm', ('token', 'sequence'))
  _one_of(cfg.mdm.weighting, 'mdm.weighting', ('time', 'realised'))
  _check(cfg.mdm.weighting == 'time' or cfg.mdm.schedule == 'linear', 'mdm.weighting',
         'realised weights estimate 1 / t, the linear schedule\'s weight: use mdm.schedule=linear')
  _check(0.0 <= cfg.mdm.random_length_frac <= 1.0, 'mdm.random_length_frac', 'must be in [0, 1]')

  o = cfg.optimizer
  _check(o.lr > 0, 'optimizer.lr', 'must be positive')
  _one_of(o.schedule, 'optimizer.schedule', ('cosine', 'wsd', 'constant'))
  _check(0.0 <= o.warmup_frac < 1.0, 'optimizer.warmup_frac', 'must be in [0, 1)')
  _check(0.0 <= o.min_lr_ratio <= 1.0, 'optimizer.min_lr_ratio', 'must be in [0, 1]')
  _check(0.0 < o.decay_frac <= 1.0, 'optimizer.decay_frac', 'must be in (0, 1]')
  _check(o.grad_clip >= 0, 'optimizer.grad_clip', 'must be >= 0 (0: no clipping)')

  _check(t.batch_size > 0, 'train.batch_size', 'must be positive')
  _check(t.steps >= 0, 'train.steps', 'must be >= 0 (0: derived from the budget)')
  _check(t.log_every > 0, 'train.log_every', 'must be positive')
  _check(t.microbatches >= 1, 'train.microbatches', 'must be at least 1')
  _check(t.batch_size % t.microbatches == 0, 'train.microbatches',
         f'train.batch_size={t.batch_size} is not divisible by {t.microbatches} microbatches')
  e = cfg.eval
  _check(e.every >= 0 and e.num_evals >= 1, 'eval.num_evals', 'need every >= 0, num_evals >= 1')
  _check(e.val_tokens >= d.seq_len, 'eval.val_tokens', f'must be at least data.seq_len={d.seq_len}')
  _check(e.batch_size > 0, 'eval.batch_size', 'must be positive')
  _check(e.mdm_samples >= 1, 'eval.mdm_samples', 'must be at least 1')
  _check_tasks(cfg.eval)
  for key in ('data', 'fsdp', 'tensor', 'expert'):
    v = getattr(cfg.mesh, key)
    _check(v == -1 or v >= 1, f'mesh.{key}', 'must be -1 (the rest) or a positive size')
  _check([getattr(cfg.mesh, k) for k in ('data', 'fsdp', 'tensor', 'expert')].count(-1) <= 1,
         'mesh', 'at most one axis may be -1')
  _check(cfg.mesh.dcn_data >= 1, 'mesh.dcn_data', 'must be a positive number of slices')
  dist = cfg.distributed
  given = (bool(dist.coordinator), dist.num_processes > 0, dist.process_id >= 0)
  _check(all(given) or not any(given), 'distributed.coordinator',
         'give distributed.coordinator, distributed.num_processes and distributed.process_id '
         'together (or none: detected from a TPU pod or SLURM environment)')
  _check(dist.process_id < max(dist.num_processes, 1), 'distributed.process_id',
         f'must be below distributed.num_processes={dist.num_processes}')
  _check(cfg.checkpoint.every >= 0 and cfg.checkpoint.keep >= 1, 'checkpoint.keep',
         'need every >= 0 and keep >= 1')


def _check_tasks(e: EvalConfig) -> None:
  from dlmjax.eval import tasks  # imported late: the task loaders need the config module
  from dlmjax.eval.likelihood import ESTIMATORS

  for spec in tasks.split_specs(e.tasks):
    try:
      tasks.check_spec(spec)
    except UserError as err:
      raise ConfigError(f'config key \'eval.tasks\': {err}') from None
  _check(e.task_every >= 1, 'eval.task_every', 'must be at least 1')
  _check(e.task_items >= 0, 'eval.task_items', 'must be >= 0 (0: every item)')
  _one_of(e.task_estimator, 'eval.task_estimator', ESTIMATORS)
  _check(e.task_samples >= 1, 'eval.task_samples', 'must be at least 1')
  _check(e.gen_tokens >= 1, 'eval.gen_tokens', 'must be at least 1')


# Keys that may change between a run and its resumption without changing what is trained.
# model.attention too: every backend computes the same function (checked against xla), so a
# run may resume on another machine with another kernel. The mesh and the process set may
# change as well: orbax reshards the checkpoint.
RESUMABLE_KEYS = ('train.progress', 'train.log_every', 'train.tensorboard', 'train.wandb',
                  'data.prefetch', 'data.cache_dir',
                  'checkpoint.keep', 'mesh.', 'model.attention', 'distributed.')


def default_run_dir(cfg: Config) -> str:
  name = cfg.name or 'run'
  return f'runs/{name}-{cfg.objective}-u{cfg.data.unique_tokens}-e{cfg.data.epochs:g}-s{cfg.seed}'


def diff_keys(a: Config, b: Config) -> list[str]:
  """Dotted keys whose values differ between two configs, ignoring RESUMABLE_KEYS."""
  fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
  return [k for k in fa if fa[k] != fb[k] and not k.startswith(RESUMABLE_KEYS)]


def run_dir_conflict(config_yaml: pathlib.Path, cfg: Config) -> str | None:
  """Why the run directory whose config.yaml is `config_yaml` cannot hold the run `cfg` (a
  run of another grid or command, or a config that cannot be read back), or None."""
  if not config_yaml.is_file():
    return None
  try:
    previous = read_config_file(config_yaml)
  except UserError as e:
    return f'{config_yaml} cannot be read back ({e}); use a new run_dir'
  if not cfg.model.vocab_size:  # resolved from the tokenizer at start-up: like with like
    previous = dataclasses.replace(previous, model=dataclasses.replace(previous.model,
                                                                       vocab_size=0))
  # Where the directory sits is not part of the run: a moved or copied one still matches.
  changed = [k for k in diff_keys(previous, cfg) if k != 'run_dir']
  if not changed:
    return None
  was = flatten(to_dict(previous))[changed[0]]
  return (f'run_dir {config_yaml.parent} holds a run with a different config (key '
          f'{changed[0]!r}: {was!r} there, {flatten(to_dict(cfg))[changed[0]]!r} here); use '
          f'another run_dir')

