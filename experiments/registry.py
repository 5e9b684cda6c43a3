"""Named grids of runs, as data: which configs, which objective x size x unique tokens x epochs.

    from experiments import registry
    grid = registry.get('crossover-tiny')
    for run in grid.runs:
      cfg = load_config(grid.configs, run.overrides)

A run's `overrides` hold every key that makes it differ from `Grid.configs` (objective, budget,
epochs, seed and any extras), so `python -m dlmjax.train *grid.configs *run.overrides`
reproduces it by hand. Names encode objective-model-U-E-seed (+ a tag for variants) and are
stable: the grid runner keys run directories on them, so renaming a run orphans its results.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

from dlmjax import config as config_lib
from dlmjax import flops as flops_lib
from dlmjax.data.tokenizer import planned_vocab_size
from dlmjax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class RunSpec:
  name: str  # stable and unique in its grid, e.g. 'mdm-1b-u500M-e192-s0'
  objective: str  # 'ar' | 'mdm'
  model: str  # size label, e.g. 'tiny', '1b'
  unique_tokens: int
  epochs: float
  seed: int
  overrides: tuple[str, ...]  # applied on top of Grid.configs
  tokens: int  # round(unique_tokens * epochs)
  flops: float  # training FLOPs of the whole run (dlmjax.flops convention)
  tag: str = ''  # the variant the name ends with ('imask0.3', 'lr1e-3'); '' or 'base': plain


@dataclasses.dataclass(frozen=True)
class Grid:
  name: str
  description: str
  hardware: str  # what it was sized for, e.g. 'CPU, 2 cores', 'TPU v5p-256'
  configs: tuple[str, ...]  # YAML presets relative to the repo root
  runs: tuple[RunSpec, ...]

  def config_paths(self) -> list[str]:
    """The presets as absolute paths, so commands work from any directory."""
    return [str(ROOT / c) for c in self.configs]


# ---------------------------------------------------------------------------------------
# Building run specs.

def count_label(n: float) -> str:
  """500_000_000 -> '500M', 1_500_000_000 -> '1.5B', 31_250 -> '31.25K'."""
  for suffix, scale in (('T', 1e12), ('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= scale:
      return f'{n / scale:g}{suffix}'
  return f'{n:g}'


@functools.lru_cache(maxsize=None)
def _unchecked_config(configs: tuple[str, ...], overrides: tuple[str, ...]) -> config_lib.Config:
  # Without the combination checks: a grid lists FLOPs even for a run that start-up would
  # reject (the dry run reports those). Keys and types are still checked.
  return config_lib.load_config([str(ROOT / f) for f in configs], list(overrides), check=False)


def vocab_size(cfg: config_lib.Config) -> int:
  return cfg.model.vocab_size or planned_vocab_size(cfg.data)


def make_run(configs: tuple[str, ...], objective: str, model: str, unique_tokens: int,
             epochs: float, seed: int = 0, extras: tuple[str, ...] = (), tag: str = '') -> RunSpec:
  name = f'{objective}-{model}-u{count_label(unique_tokens)}-e{epochs:g}-s{seed}'
  if tag:
    name += f'-{tag}'
  overrides = (f'objective={objective}', f'data.unique_tokens={unique_tokens}',
               f'data.epochs={epochs!r}', f'seed={seed}', *extras)
  tokens = round(unique_tokens * epochs)
  cfg = _unchecked_config(configs, tuple(overrides))
  per_token = flops_lib.train_flops_per_token(cfg.model, vocab_size(cfg), cfg.data.seq_len)
  return RunSpec(name=name, objective=objective, model=model, unique_tokens=unique_tokens,
                 epochs=epochs, seed=seed, overrides=overrides, tokens=tokens,
                 flops=per_token * tokens, tag=tag)


def _epochs_for(total: float, unique: int) -> float:
  # Division, not a table: 96e9 / 1.5e9 == 64.0 and 96e9 / 10e9 == 9.6 exactly in floats,
  # so U x E reproduces the total budget to the token.
  return total / unique


# ---------------------------------------------------------------------------------------
# The grids.

PAPER_UNIQUE = (500_000_000, 1_000_000_000, 1_500_000_000, 10_000_000_000, 96_000_000_000)
PAPER_TOTAL = 96e9
OBJECTIVES = ('ar', 'mdm')


def _model_extras(size: str) -> tuple[str, ...]:
  """The keys of configs/models/SIZE.yaml as key=value overrides."""
  data = config_lib.read_yaml(str(ROOT / f'configs/models/{size}.yaml'))
  flat = config_lib.flatten(data)
  return tuple(f'{k}={v}' for k, v in flat.items())


def paper_grid(name: str, description: str, sizes: tuple[str, ...], *,
               extra_1b_480: bool) -> Grid:
  # A grid has one preset list; with one size the model preset joins it, with several the
  # shape travels in each run's overrides (the same keys as configs/models/SIZE.yaml).
  configs = ('configs/paper.yaml',)
  if len(sizes) == 1:
    configs += (f'configs/models/{sizes[0]}.yaml',)
  extras = lambda size: () if len(sizes) == 1 else _model_extras(size)
  runs = []
  for size in sizes:
    for objective in OBJECTIVES:
      for u in PAPER_UNIQUE:
        runs.append(make_run(configs, objective, size, u, _epochs_for(PAPER_TOTAL, u),
                             extras=extras(size)))
  if extra_1b_480:
    # The papers' longest repetition: 1B unique tokens for 480 epochs (480B tokens) at 1B.
    for objective in OBJECTIVES:
      runs.append(make_run(configs, objective, '1b', 1_000_000_000, 480.0, extras=extras('1b')))
  return Grid(name, description, 'TPU v5p-256 or 64 x H100', configs, tuple(runs))


# The regularisers of the two papers' ablations, at the ranges the first paper sweeps (input
# masking and dropout up to 90%) plus the second paper's attention dropout. Parameter noise
# goes on weight matrices and embeddings only (ar.py), at stds up to the 0.02 init std.
AR_REGULARISERS = (
    *((f'imask{r:g}', (f'ar.input_mask_rate={r}',)) for r in (0.1, 0.3, 0.5, 0.7, 0.9)),
    *((f'mlpdrop{p:g}', (f'model.mlp_dropout={p}',)) for p in (0.1, 0.3, 0.5, 0.7, 0.9)),
    *((f'attndrop{p:g}', (f'model.attn_dropout={p}',)) for p in (0.1, 0.3, 0.5)),
    *((f'wd{w:g}', (f'optimizer.weight_decay={w}',)) for w in (0.0, 0.3, 1.0)),
    *((f'pnoise{x:g}', (f'ar.param_noise_std={x}',)) for x in (0.002, 0.005, 0.01, 0.02)),
    # The second paper's combination: MLP dropout with strong weight decay.
    ('mlpdrop0.1-wd1', ('model.mlp_dropout=0.1', 'optimizer.weight_decay=1.0')),
)


def ablation_grid(name: str, description: str, configs: tuple[str, ...], model: str,
                  unique_tokens: int, epochs: float, hardware: str,
                  common: tuple[str, ...] = ()) -> Grid:
  """Plain AR, AR with each regulariser, and the MDM (with its masking-range variants) at one
  unique budget, every run with the same recipe."""
  def run(objective, tag='', *extras):
    return make_run(configs, objective, model, unique_tokens, epochs, extras=common + extras,
                    tag=tag)

  runs = [run('ar')]
  runs += [run('ar', tag, *extras) for tag, extras in AR_REGULARISERS]
  # mdm.eps raises the lower end of the mask ratio t ~ U(eps, 1): the masking-range variants.
  # 1e-3 is the recipe's default, so that run is the plain MDM baseline.
  runs.append(run('mdm', '', 'mdm.eps=0.001'))
  runs += [run('mdm', f'eps{e:g}', f'mdm.eps={e}') for e in (0.2, 0.5)]
  return Grid(name, description, hardware, configs, tuple(runs))


def crossover_tiny() -> Grid:
  configs = ('configs/tiny.yaml',)
  runs = [make_run(configs, objective, 'tiny', u, _epochs_for(2e6, u))
          for objective in OBJECTIVES for u in (31_250, 250_000, 2_000_000)]
  return Grid('crossover-tiny',
              'AR vs MDM on the tiny CPU model at 2M total tokens: 31.25K, 250K and 2M unique '
              'tokens (64, 8 and 1 epochs). 10.3 minutes on 2 cores with --workers 2.',
              'CPU, 2 cores', configs, tuple(runs))


CODER_CONFIGS = ('configs/paper.yaml', 'configs/models/1.7b.yaml')
TINY_WIDE = ('model.d_model=192', 'model.d_ff=768')


# The budgets sit where the training-time crossover happens on CPU at 2M tokens: AR's
# validation curve turns up within the run at 250 and 64 epochs (docs/study-notes.md), so the
# MDM can pass it there; 16 and 1 epochs show AR winning with more unique data.
SMALL_UNIQUE = (8_000, 31_250, 125_000, 2_000_000)


def crossover_small() -> Grid:
  configs = ('configs/tiny.yaml',)
  runs = []
  for model, extras in (('tiny', ()), ('tiny-wide', TINY_WIDE)):
    for objective in OBJECTIVES:
      for u in SMALL_UNIQUE:
        runs.append(make_run(configs, objective, model, u, _epochs_for(2e6, u), extras=extras))
  return Grid('crossover-small',
              'AR vs MDM at two CPU sizes (tiny, tiny-wide: d_model 192) x 4 unique-token budgets '
              'at 2M total tokens (250, 64, 16, 1 epochs): does the crossover in training time '
              'come later with more unique data and earlier with the larger model? '
              'Measured: 12 of its runs (the other 4 are crossover-tiny runs) took 98 minutes '
              'with --workers 2 on a shared 2-core machine under load 5-30 '
              '(docs/study-notes.md); a wide run costs about twice a tiny one.',
              'CPU, 2 cores', configs, tuple(runs))


# The recipe search (docs/study-notes.md, "Recipe search"): one axis at a time from the
# tiny preset, both objectives under identical settings. At each setting AR is trained to
# several lengths, each with its own full cosine decay (its early-stopped baseline is the best
# of them), and the MDM for hundreds of epochs. Tasks are scored afterwards on the final
# checkpoints (`python -m dlmjax.eval RUN tasks=...`), so the runs skip them.
RECIPE_U = 16_000
RECIPE_AR_EPOCHS = (8, 16, 32, 64)
RECIPE_MDM_EPOCHS = (125, 250, 500)
RECIPE_AXES = (
    # (tag, overrides); 'base' is configs/tiny.yaml itself.
    ('base', ()),
    ('lr1e-3', ('optimizer.lr=0.001',)),
    ('lr4e-3', ('optimizer.lr=0.004',)),
    ('warm20', ('optimizer.warmup_frac=0.2',)),
    ('L4', ('model.n_layers=4',)),  # twice the FLOPs: depth
    ('d192', TINY_WIDE),  # 2.1x the FLOPs: width
    ('d96L4', ('model.d_model=96', 'model.d_ff=384', 'model.n_heads=4', 'model.n_layers=4')),
    ('seq256', ('data.seq_len=256', 'train.batch_size=16')),  # the same tokens per batch
    ('seq64', ('data.seq_len=64', 'train.batch_size=64')),
    ('b16', ('train.batch_size=16',)),
    ('b64', ('train.batch_size=64',)),
    ('bpe512', ('data.tokenizer=bpe', 'data.bpe_vocab_size=512')),
)
# MDM-only settings: the AR runs of 'base' are their baseline.
RECIPE_MDM_AXES = (
    ('anti', ('mdm.antithetic=true',)),
    ('seqnorm', ('mdm.loss_norm=sequence',)),
    ('cosine', ('mdm.schedule=cosine',)),
)


def recipe_tiny() -> Grid:
  configs = ('configs/tiny.yaml',)
  common = ('eval.tasks=',)
  runs = []
  for tag, extras in RECIPE_AXES:
    for e in RECIPE_AR_EPOCHS:
      runs.append(make_run(configs, 'ar', 'tiny', RECIPE_U, float(e), extras=common + extras,
                           tag=tag))
    for e in RECIPE_MDM_EPOCHS:
      runs.append(make_run(configs, 'mdm', 'tiny', RECIPE_U, float(e), extras=common + extras,
                           tag=tag))
  for tag, extras in RECIPE_MDM_AXES:
    for e in RECIPE_MDM_EPOCHS:
      runs.append(make_run(configs, 'mdm', 'tiny', RECIPE_U, float(e), extras=common + extras,
                           tag=tag))
  # The unique budget itself: half of it, and the one-epoch end of the crossover.
  for e in (8, 16, 32, 64, 128):
    runs.append(make_run(configs, 'ar', 'tiny', 8_000, float(e), extras=common, tag='base'))
  for e in (250, 500, 1000):
    runs.append(make_run(configs, 'mdm', 'tiny', 8_000, float(e), extras=common, tag='base'))
  for objective in OBJECTIVES:
    runs.append(make_run(configs, objective, 'tiny', 1_000_000, 1.0, extras=common, tag='base'))
  return Grid('recipe-tiny',
              'Recipe search on the tiny CPU model at U = 16K unique tokens: learning rate, '
              'warmup, depth and width, sequence length, batch size, tokenizer and the MDM\'s '
              'loss options, one axis at a time; AR at 8-64 epochs (each with its full '
              'decay), the MDM at 125-500 epochs; plus U = 8K and one epoch of 1M.',
              'CPU, 2 cores', configs, tuple(runs))


# The demo's study (docs/study-notes.md, "The demo"): the recipe search's best showing for
# the MDM, the tiny preset at U = 16K. AR is trained to four lengths, each with its own full
# decay, so its early-stopped baseline is the best annealed run (32 epochs in the search); the
# MDM trains for 250 epochs; one epoch of 1M unique tokens is the other end of the crossover.
DEMO_U = 16_000
DEMO_AR_EPOCHS = (16, 32, 48, 64)
DEMO_MDM_EPOCHS = (250,)
DEMO_ONE_EPOCH_U = 1_000_000


def demo_tiny() -> Grid:
  configs = ('configs/tiny.yaml', 'configs/demo.yaml')
  runs = [make_run(configs, 'ar', 'tiny', DEMO_U, float(e)) for e in DEMO_AR_EPOCHS]
  runs += [make_run(configs, 'mdm', 'tiny', DEMO_U, float(e)) for e in DEMO_MDM_EPOCHS]
  runs += [make_run(configs, objective, 'tiny', DEMO_ONE_EPOCH_U, 1.0) for objective in OBJECTIVES]
  return Grid('demo-tiny',
              'The demo: the tiny CPU model at U = 16K unique tokens, AR at 16-64 epochs (each '
              'with its full decay; the best is its early-stopped baseline) against the MDM at '
              '250 epochs, and both at one epoch of 1M unique tokens.',
              'CPU, 2 cores', configs, tuple(runs))


# Does the MDM overtake AR on accuracy with a larger model? At the demo's U = 16K the tiny
# MDM ties AR on the suite at 1000 epochs (docs/study-notes.md, "Accuracy against repetition");
# both papers find the DLM's advantage grows with model size at a fixed unique budget, and the
# wide model (d_model 192, 1.28M parameters) is the one that beat early-stopped AR on
# validation in crossover-small. AR at 32 and 48 epochs (its validation- and accuracy-best
# lengths in the recipe search) and 250; the MDM at 250 and 1000; one epoch of 1M; 3 seeds.
HEADLINE_AR_EPOCHS = (32, 48, 250)
HEADLINE_MDM_EPOCHS = (250, 1000)


def headline_small() -> Grid:
  configs = ('configs/tiny.yaml', 'configs/demo.yaml')
  runs = []
  for seed in range(6):
    runs += [make_run(configs, 'ar', 'tiny-wide', DEMO_U, float(e), seed, TINY_WIDE)
             for e in HEADLINE_AR_EPOCHS]
    runs += [make_run(configs, 'mdm', 'tiny-wide', DEMO_U, float(e), seed, TINY_WIDE)
             for e in HEADLINE_MDM_EPOCHS]
    runs += [make_run(configs, objective, 'tiny-wide', DEMO_ONE_EPOCH_U, 1.0, seed, TINY_WIDE)
             for objective in OBJECTIVES]
  return Grid('headline-small',
              'The papers\' headline at a larger CPU size: the wide tiny model (d_model 192) at '
              'U = 16K, AR at 32-250 epochs against the MDM at 250 and 1000, and one epoch of '
              '1M, seeds 0-5, the embedded suite scored at the end of each run. 2.2e14 '
              'FLOPs a seed: seeds 3 and 4 took 75 minutes on 2 cores with --workers 2; '
              'seeds 0-4 are recorded in docs/study-notes.md.',
              'CPU, 2 cores', configs, tuple(runs))


def ablation_tiny() -> Grid:
  """The regulariser ablation at the demo's smallest budget, every run with the MDM's compute
  (250 epochs of 16K), plus plain AR at the demo's shorter lengths: its early-stopped baseline."""
  configs = ('configs/tiny.yaml', 'configs/demo.yaml')
  grid = ablation_grid('ablation-regularisers-tiny',
                       'The regulariser ablation on the tiny CPU model at the demo\'s U = 16K, '
                       'all at the MDM\'s 250 epochs, with plain AR at 16-64 epochs as the '
                       'early-stopped baseline.', configs, 'tiny', DEMO_U,
                       float(DEMO_MDM_EPOCHS[-1]), 'CPU, 2 cores')
  shorter = tuple(make_run(configs, 'ar', 'tiny', DEMO_U, float(e)) for e in DEMO_AR_EPOCHS)
  return dataclasses.replace(grid, runs=shorter + grid.runs)


def _build() -> dict[str, Grid]:
  grids = [
      paper_grid('paper-dense',
                 'AR vs MDM, 1B-8B dense x 0.5B-96B unique tokens at 96B total tokens, plus '
                 '1B unique x 480 epochs at 1B (arXiv 2511.03276).',
                 ('1b', '2b', '4b', '8b'), extra_1b_480=True),
      paper_grid('paper-moe',
                 'AR vs MDM, 8B-A1B mixture of experts (64 experts, top-8; 6.85B params, '
                 '1.21B active) x 0.5B-96B unique tokens at 96B total.',
                 ('8b-a1b',), extra_1b_480=False),
      Grid('paper-coder',
           'AR vs MDM at 1.7B on 10B unique code tokens for 150 epochs (~1.5T tokens; '
           'the first paper, arXiv 2511.03276). Set data.corpus to the code corpus.',
           'TPU v5p-256 or 64 x H100', CODER_CONFIGS,
           tuple(make_run(CODER_CONFIGS, objective, '1.7b', 10_000_000_000, 150.0)
                 for objective in OBJECTIVES)),
      ablation_grid('ablation-regularisers',
                    'AR regularisers under data constraints (input masking and MLP dropout to '
                    '90%, attention dropout, weight decay, parameter noise) vs MDM masking '
                    'ranges; 1B model, 1B unique tokens x 96 epochs (arXiv 2511.03276).',
                    ('configs/paper.yaml', 'configs/models/1b.yaml'), '1b', 1_000_000_000,
                    96.0, 'TPU v5p-256 or 64 x H100'),
      ablation_grid('ablation-regularisers-0.6b',
                    'The same ablation at the second paper\'s model size (0.6B, arXiv '
                    '2510.04071), 1B unique tokens x 96 epochs.',
                    ('configs/paper.yaml', 'configs/models/0.6b.yaml'), '0.6b',
                    1_000_000_000, 96.0, 'TPU v5p-64 or 16 x H100'),
      crossover_tiny(),
      crossover_small(),
      recipe_tiny(),
      demo_tiny(),
      ablation_tiny(),
      headline_small(),
  ]
  return {g.name: g for g in grids}


GRIDS: dict[str, Grid] = _build()


def names() -> list[str]:
  return list(GRIDS)


def get(name: str) -> Grid:
  if name not in GRIDS:
    raise UserError(f'unknown grid {name!r}; known grids: {", ".join(GRIDS)}')
  return GRIDS[name]
