"""Config: presets, overrides, and one-line errors that name the bad key."""

import pathlib
import subprocess
import sys

import pytest

from dlmjax import config as config_lib
from dlmjax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / 'configs').glob('*.yaml'))
MODELS = sorted((ROOT / 'configs' / 'models').glob('*.yaml'))


def test_overrides_are_typed_and_accept_token_suffixes():
  cfg = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                               ['objective=ar', 'data.unique_tokens=1.5M', 'data.epochs=20',
                                'model.qk_norm=true', 'optimizer.lr=1e-3'])
  assert cfg.objective == 'ar'
  assert cfg.data.unique_tokens == 1_500_000
  assert cfg.data.epochs == 20.0 and isinstance(cfg.data.epochs, float)
  assert cfg.model.qk_norm is True
  assert cfg.optimizer.lr == 1e-3
  assert cfg.name == 'tiny'


def test_later_files_and_overrides_win(tmp_path):
  a, b = tmp_path / 'a.yaml', tmp_path / 'b.yaml'
  a.write_text('model: {d_model: 64, n_heads: 2}\n')
  b.write_text('model: {d_model: 96}\n')
  cfg = config_lib.load_config([str(a), str(b)], ['model.n_layers=3'])
  assert (cfg.model.d_model, cfg.model.n_heads, cfg.model.n_layers) == (96, 2, 3)
  assert cfg.name == 'a-b'


@pytest.mark.parametrize('arg, key', [
    ('model.dmodel=3', "'model.dmodel'"),
    ('trian.steps=3', "'trian.steps'"),
    ('train.steps=abc', "'train.steps'"),
    ('model.qk_norm=maybe', "'model.qk_norm'"),
    ('objective=gpt', "'objective'"),
    ('model.n_heads=3', "'model.n_heads'"),
    ('data.epochs=0', "'data.epochs'"),
    ('model=3', "'model'"),
    ('model.attention=flash', "'model.attention'"),
    ('model.attention=cudnn', "'model.attention'"),  # needs bfloat16
    ('model.attn_dropout=0.1 model.attention=pallas', "'model.attn_dropout'"),
])
def test_bad_key_or_value_names_the_key(arg, key):
  with pytest.raises(ConfigError) as e:
    config_lib.load_config([], arg.split())
  assert key in str(e.value)
  assert '\n' not in str(e.value)


def test_unknown_key_suggests_the_close_one():
  with pytest.raises(ConfigError, match="did you mean 'model.d_model'"):
    config_lib.load_config([], ['model.d_modle=3'])


def test_cli_exits_2_with_one_line_naming_the_key():
  proc = subprocess.run([sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', 'train.stepz=5'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "'train.stepz'" in lines[0], proc.stderr
  proc = subprocess.run([sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', 'train.steps=x'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "'train.steps'" in proc.stderr


def test_missing_config_file_is_a_one_line_error():
  with pytest.raises(ConfigError, match='nope.yaml'):
    config_lib.load_config(['nope.yaml'])


@pytest.mark.parametrize('path', PRESETS + MODELS, ids=lambda p: p.name)
def test_every_preset_loads(path):
  files = [str(path)] if path.parent.name == 'configs' else [str(ROOT / 'configs/paper.yaml'), str(path)]
  if 'num_experts' in path.read_text():
    with pytest.raises(ConfigError, match='model.num_experts'):
      config_lib.load_config(files)
  else:
    config_lib.load_config(files)


def test_round_trip_through_yaml():
  import yaml
  cfg = config_lib.load_config([str(ROOT / 'configs/paper.yaml'), str(ROOT / 'configs/models/4b.yaml')])
  back = config_lib.from_dict(yaml.safe_load(config_lib.to_yaml(cfg)))
  assert back == cfg


def test_paper_presets_have_the_advertised_sizes():
  from dlmjax import flops
  sizes = {'1b': 1.0e9, '1.7b': 1.7e9, '2b': 2.0e9, '4b': 4.0e9, '8b': 8.0e9}
  for name, target in sizes.items():
    cfg = config_lib.load_config([str(ROOT / 'configs/paper.yaml'), str(ROOT / f'configs/models/{name}.yaml')])
    n = flops.num_params(cfg.model, cfg.data.bpe_vocab_size)
    assert 0.75 * target < n < 1.3 * target, (name, n)
