"""`python -m dlmjax.export`: the Llama layout round-trips, and what has no Llama counterpart
is refused. Parity with transformers itself is tests/test_export_hf.py (make test-extras)."""

import json
import pathlib

import jax
import numpy as np
import pytest

import dlmjax
from dlmjax import config as config_lib, export, train
from dlmjax.data.tokenizer import BPETokenizer, ByteTokenizer
from dlmjax.errors import UserError

pytest.importorskip('safetensors', reason='the [dev] extra installs safetensors')

ROOT = pathlib.Path(__file__).resolve().parents[1]

# tests/test_train.py's MICRO, with grouped-query attention (4 query heads on 2 kv heads).
MICRO = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=4', 'model.n_kv_heads=2',
         'model.d_ff=64', 'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=5000',
         'data.epochs=1', 'eval.val_tokens=1024', 'eval.num_evals=1', 'eval.batch_size=8',
         'eval.mdm_samples=2', 'train.progress=false']


def micro_run(run_dir, *overrides):
  train.run(config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                                   [*MICRO, f'run_dir={run_dir}', *overrides]))
  return run_dir


@pytest.fixture(scope='module')
def mdm_export(tmp_path_factory):
  root = tmp_path_factory.mktemp('export')
  run_dir = micro_run(root / 'mdm', 'objective=mdm', 'model.tie_embeddings=true')
  return run_dir, export.export_run(run_dir, root / 'hf')


def test_an_export_loads_back_as_a_run_with_the_same_parameters_bit_for_bit(mdm_export):
  run_dir, out = mdm_export
  a, b = dlmjax.load_run(run_dir), dlmjax.load_run(out)
  assert b.step == a.step and b.config == a.config and not b.causal
  leaves_a, leaves_b = jax.tree.leaves_with_path(a.params), jax.tree.leaves_with_path(b.params)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    assert x.dtype == y.dtype, path
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
  ids = np.array([[1] + a.tokenizer.encode('def f(x):\n    return x\n')])
  np.testing.assert_array_equal(a.logits(ids), b.logits(ids))
  assert dlmjax.load_run(out, step=a.step).step == a.step
  with pytest.raises(UserError, match=f'is an export of step {a.step}; it holds no step 1\\b'):
    dlmjax.load_run(out, step=1)


def test_the_config_marks_a_diffusion_export_bidirectional_with_its_mask(mdm_export):
  _, out = mdm_export
  cfg = json.loads((out / 'config.json').read_text())
  assert cfg['architectures'] == ['LlamaForCausalLM'] and cfg['model_type'] == 'llama'
  assert cfg['is_causal'] is False and cfg['mask_token_id'] == 3
  assert cfg['dlmjax'] == {'objective': 'mdm', 'bidirectional': True, 'mask_token_id': 3,
                           'never_predicted': [0, 1, 3]}
  assert cfg['num_key_value_heads'] == 2 and cfg['head_dim'] == 8
  assert cfg['tie_word_embeddings'] is True
  gen = json.loads((out / 'generation_config.json').read_text())
  assert gen['suppress_tokens'] == [0, 1, 3]
  assert not (out.parent / '.hf.partial').exists()


def test_grouped_query_heads_land_in_transformers_order():
  # Query head h reads kv head h // G in transformers' Llama (repeat_kv); ours are k-major.
  cfg = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')], MICRO)
  d, k, g, dh = 32, 2, 2, 8
  qkv = np.arange(d * k * (g + 2) * dh, dtype=np.float32).reshape(d, k, g + 2, dh)
  block = {'w_qkv': qkv, 'w_o': np.zeros((k * g, dh, d), np.float32),
           'w_gate_up': np.zeros((d, 2, 64), np.float32), 'w_down': np.zeros((64, d), np.float32),
           'attn_norm': {'scale': np.ones(d, np.float32)},
           'mlp_norm': {'scale': np.ones(d, np.float32)}}
  params = {'blocks': {0: block}, 'embed': np.zeros((260, d), np.float32),
            'final_norm': {'scale': np.ones(d, np.float32)},
            'unembed': np.zeros((d, 260), np.float32)}
  hf = export.to_hf(params, cfg)
  q = hf['model.layers.0.self_attn.q_proj.weight'].reshape(k * g, dh, d)
  kk = hf['model.layers.0.self_attn.k_proj.weight'].reshape(k, dh, d)
  for h in range(k * g):
    np.testing.assert_array_equal(q[h], qkv[:, h // g, h % g].T)
  np.testing.assert_array_equal(kk[1], qkv[:, 1, g].T)
  back = export.from_hf(hf, cfg)
  np.testing.assert_array_equal(back['blocks'][0]['w_qkv'], qkv)


@pytest.mark.parametrize('tokenizer', ['byte', 'bpe'])
def test_the_exported_tokenizer_gives_our_ids(tokenizer):
  text = 'def f(x):\n    return "ünïcode" + x  # <|mask|> is text here\n'
  if tokenizer == 'byte':
    tok = ByteTokenizer()
  else:
    tok = BPETokenizer.train(iter(['def f(x):\n    return x\n'] * 50 + [text]), vocab_size=300)
  hf = export.hf_tokenizer(tok)
  plain = text.replace('<|mask|>', 'mask')  # a fast tokenizer reads special-token text as one
  assert hf.encode(plain, add_special_tokens=False).ids == tok.encode(plain)
  assert hf.decode(tok.encode(plain)) == plain
  assert [hf.token_to_id(t) for t in ('<|pad|>', '<|bos|>', '<|eos|>', '<|mask|>')] == [0, 1, 2, 3]


@pytest.mark.parametrize('override, key', [('model.num_experts=4', 'model.num_experts'),
                                           ('model.qk_norm=true', 'model.qk_norm')])
def test_models_without_a_llama_counterpart_are_refused_naming_the_key(override, key):
  cfg = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                               [override, 'model.experts_per_token=2'] if 'experts' in override
                               else [override])
  with pytest.raises(UserError, match=key):
    export.check_exportable(cfg)


def test_exporting_onto_the_run_itself_is_a_one_line_error(mdm_export):
  run_dir, _ = mdm_export
  with pytest.raises(UserError, match='is the run directory itself'):
    export.export_run(run_dir, run_dir)


def test_the_export_command_writes_the_checkpoint_and_names_a_bad_run_dir(mdm_export, tmp_path,
                                                                         capsys):
  run_dir, _ = mdm_export
  assert export.main([str(run_dir), '--out', str(tmp_path / 'hf')]) == 0
  assert 'a Hugging Face checkpoint' in capsys.readouterr().out
  assert export.is_export(tmp_path / 'hf')
  with pytest.raises(SystemExit) as e:
    export.main([str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'x')])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'nowhere' in err and err.count('\n') == 1
