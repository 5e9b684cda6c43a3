"""`python -m dlmjax.export RUN_DIR --out DIR [--step N]`: a run as a Hugging Face checkpoint.

The model is a Llama (RMSNorm, rotate-half RoPE, SwiGLU, grouped-query attention, no biases),
so both objectives export to `LlamaForCausalLM`'s layout:

    DIR/config.json              LlamaConfig, plus "dlmjax": objective, bidirectional, mask id
    DIR/model.safetensors        the weights under transformers' names, float32 as trained
    DIR/generation_config.json   bos / eos / pad, and suppress_tokens (see below)
    DIR/tokenizer.json, tokenizer_config.json, special_tokens_map.json   a fast tokenizer
    DIR/config.yaml, DIR/tokenizer/   the run's own config and tokenizer: `dlmjax.load_run(DIR)`
                                 opens the export like a run, with the same parameters bit for bit

An AR export loads with `AutoModelForCausalLM.from_pretrained(DIR)` and needs no code of ours.
A diffusion (MDM) export has the same weights with `"is_causal": false`, `"mask_token_id"` and
"dlmjax": {"bidirectional": true} in its config, the layout of LLaDA- and Dream-style
checkpoints. transformers' Llama reads is_causal and attends bidirectionally, so the same
`from_pretrained` gives the MDM's logits (tests/test_export_hf.py); loaded with
`is_causal=True` it is not the model.

dlmjax sets the logits of PAD, BOS and MASK to -1e9 (they are never targets); a Llama head has
no place for that, so transformers' logits there are the raw projection. Every other logit
matches; `generation_config.suppress_tokens` makes `generate` skip those three ids, as our
sampler does. MoE and qk-norm models have no Llama counterpart and are refused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import sys
from typing import Any

import numpy as np

from dlmjax.data.tokenizer import (BOS_ID, EOS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SPECIAL_TOKENS,
                                   ByteTokenizer, Tokenizer, byte_level_decoder)
from dlmjax.errors import UserError, exit_on_user_error
from dlmjax.model import transformer

WEIGHTS = 'model.safetensors'
NEVER_PREDICTED = list(transformer.NEVER_PREDICTED)  # the ids the model suppresses


def _safetensors():
  try:
    import safetensors.numpy
  except ImportError:
    raise UserError('exporting or loading a Hugging Face checkpoint needs safetensors: '
                    'pip install -e ".[hf]"') from None
  return safetensors.numpy


def check_exportable(cfg) -> None:
  m = cfg.model
  if m.num_experts:
    raise UserError(f'model.num_experts={m.num_experts}: a mixture of experts has no Llama '
                    f'layout to export to')
  if m.qk_norm:
    raise UserError('model.qk_norm=true: Llama has no query/key norm to export it to')


def to_hf(params: dict, cfg) -> dict[str, np.ndarray]:
  """dlmjax parameters -> {transformers name: float array} (LlamaForCausalLM)."""
  m = cfg.model
  d, k, g, dh = m.d_model, m.kv_heads, m.n_heads // m.kv_heads, m.dh
  out = {'model.embed_tokens.weight': params['embed']}
  for i, b in sorted(params['blocks'].items()):
    p = f'model.layers.{i}.'
    qkv = np.asarray(b['w_qkv'])  # [D, K, G + 2, Dh]; query head h = kv head h // G (HF's too)
    out[p + 'self_attn.q_proj.weight'] = qkv[:, :, :g].reshape(d, k * g * dh).T
    out[p + 'self_attn.k_proj.weight'] = qkv[:, :, g].reshape(d, k * dh).T
    out[p + 'self_attn.v_proj.weight'] = qkv[:, :, g + 1].reshape(d, k * dh).T
    out[p + 'self_attn.o_proj.weight'] = np.asarray(b['w_o']).reshape(k * g * dh, d).T
    gate_up = np.asarray(b['w_gate_up'])  # [D, 2, F]
    out[p + 'mlp.gate_proj.weight'] = gate_up[:, 0].T
    out[p + 'mlp.up_proj.weight'] = gate_up[:, 1].T
    out[p + 'mlp.down_proj.weight'] = np.asarray(b['w_down']).T
    out[p + 'input_layernorm.weight'] = b['attn_norm']['scale']
    out[p + 'post_attention_layernorm.weight'] = b['mlp_norm']['scale']
  out['model.norm.weight'] = params['final_norm']['scale']
  if not m.tie_embeddings:
    out['lm_head.weight'] = np.asarray(params['unembed']).T
  return {name: np.ascontiguousarray(np.asarray(v)) for name, v in out.items()}


def from_hf(tensors: dict[str, np.ndarray], cfg) -> dict:
  """The inverse of `to_hf`: {transformers name: array} -> dlmjax parameters."""
  m = cfg.model
  d, k, g, dh = m.d_model, m.kv_heads, m.n_heads // m.kv_heads, m.dh

  def get(name):
    if name not in tensors:
      raise UserError(f'{WEIGHTS} has no tensor {name!r}')
    return tensors[name]

  blocks = {}
  for i in range(m.n_layers):
    p = f'model.layers.{i}.'
    q = get(p + 'self_attn.q_proj.weight').T.reshape(d, k, g, dh)
    kk = get(p + 'self_attn.k_proj.weight').T.reshape(d, k, 1, dh)
    v = get(p + 'self_attn.v_proj.weight').T.reshape(d, k, 1, dh)
    blocks[i] = {
        'attn_norm': {'scale': get(p + 'input_layernorm.weight')},
        'mlp_norm': {'scale': get(p + 'post_attention_layernorm.weight')},
        'w_qkv': np.concatenate([q, kk, v], axis=2),
        'w_o': get(p + 'self_attn.o_proj.weight').T.reshape(k * g, dh, d),
        'w_gate_up': np.stack([get(p + 'mlp.gate_proj.weight').T,
                               get(p + 'mlp.up_proj.weight').T], axis=1),
        'w_down': get(p + 'mlp.down_proj.weight').T,
    }
  params = {'blocks': blocks, 'embed': get('model.embed_tokens.weight'),
            'final_norm': {'scale': get('model.norm.weight')}}
  if not m.tie_embeddings:
    params['unembed'] = get('lm_head.weight').T
  return _contiguous(params)


def _contiguous(x):
  if isinstance(x, dict):
    return {n: _contiguous(v) for n, v in x.items()}
  return np.ascontiguousarray(x)


def hf_config(cfg, vocab_size: int, causal: bool) -> dict[str, Any]:
  m = cfg.model
  out = {
      'architectures': ['LlamaForCausalLM'],
      'model_type': 'llama',
      'vocab_size': vocab_size,
      'hidden_size': m.d_model,
      'intermediate_size': m.d_ff,
      'num_hidden_layers': m.n_layers,
      'num_attention_heads': m.n_heads,
      'num_key_value_heads': m.kv_heads,
      'head_dim': m.dh,
      'hidden_act': 'silu',
      'rms_norm_eps': m.norm_eps,
      'rope_theta': m.rope_theta,
      'rope_parameters': {'rope_type': 'default', 'rope_theta': m.rope_theta},
      'max_position_embeddings': cfg.data.seq_len,
      'attention_bias': False,
      'mlp_bias': False,
      'tie_word_embeddings': m.tie_embeddings,
      'pad_token_id': PAD_ID,
      'bos_token_id': BOS_ID,
      'eos_token_id': EOS_ID,
      'torch_dtype': 'float32',
      'dlmjax': {'objective': cfg.objective, 'bidirectional': not causal,
                 'never_predicted': NEVER_PREDICTED},
  }
  if not causal:
    out.update(is_causal=False, mask_token_id=MASK_ID)
    out['dlmjax']['mask_token_id'] = MASK_ID
  return out


def hf_tokenizer(tokenizer: Tokenizer):
  """Our tokenizer as a `tokenizers.Tokenizer` with the same ids (bytes: b -> b + 4)."""
  from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
  if not isinstance(tokenizer, ByteTokenizer):
    return HFTokenizer.from_str(tokenizer._hf.to_str())
  # Byte-level BPE with no merges: every byte is its own token, at GPT-2's stand-in character.
  vocab = {char: b + NUM_SPECIAL for char, b in byte_level_decoder().items()}
  vocab.update({text: i for i, text in enumerate(SPECIAL_TOKENS)})
  hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
  hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  hf.decoder = decoders.ByteLevel()
  hf.add_special_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS])
  return hf


def export_run(run_dir: str | pathlib.Path, out: str | pathlib.Path, step: int | None = None
               ) -> pathlib.Path:
  """Writes the Hugging Face checkpoint of `run_dir` (at its latest or `step` checkpoint)."""
  from dlmjax.run import load_run
  run = load_run(run_dir, step)
  check_exportable(run.config)
  out = pathlib.Path(out)
  if out.resolve() == run.dir.path.resolve():
    raise UserError(f'--out {out} is the run directory itself; choose a new directory')
  st = _safetensors()
  tmp = out.with_name(f'.{out.name}.partial')
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  vocab = run.config.model.vocab_size or run.tokenizer.vocab_size
  tensors = to_hf(run.params, run.config)
  st.save_file(tensors, str(tmp / WEIGHTS), metadata={'format': 'pt'})
  (tmp / 'config.json').write_text(json.dumps(hf_config(run.config, vocab, run.causal),
                                              indent=2) + '\n')
  (tmp / 'generation_config.json').write_text(json.dumps({
      'bos_token_id': BOS_ID, 'eos_token_id': EOS_ID, 'pad_token_id': PAD_ID,
      'suppress_tokens': NEVER_PREDICTED}, indent=2) + '\n')
  hf_tokenizer(run.tokenizer).save(str(tmp / 'tokenizer.json'))
  specials = dict(zip(('pad_token', 'bos_token', 'eos_token', 'mask_token'), SPECIAL_TOKENS))
  (tmp / 'tokenizer_config.json').write_text(json.dumps({
      'tokenizer_class': 'PreTrainedTokenizerFast', 'add_bos_token': False,
      'model_max_length': run.config.data.seq_len, **specials}, indent=2) + '\n')
  (tmp / 'special_tokens_map.json').write_text(json.dumps(specials, indent=2) + '\n')
  shutil.copy(run.dir.config, tmp / 'config.yaml')
  shutil.copytree(run.dir.tokenizer, tmp / 'tokenizer')
  (tmp / 'export.json').write_text(json.dumps({
      'source': str(run.dir.path.resolve()), 'step': run.step,
      'exported': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')},
      indent=2) + '\n')
  if out.exists():
    shutil.rmtree(out)
  tmp.rename(out)  # the finished export appears at once
  return out


def is_export(path: pathlib.Path) -> bool:
  return (path / WEIGHTS).is_file() and (path / 'config.json').is_file()


def load_params(path: pathlib.Path, cfg) -> dict:
  """The dlmjax parameters of the export at `path` (for `dlmjax.load_run`)."""
  check_exportable(cfg)
  return from_hf(_safetensors().load_file(str(path / WEIGHTS)), cfg)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m dlmjax.export', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('run_dir')
  p.add_argument('--out', required=True)
  p.add_argument('--step', type=int)
  with exit_on_user_error():
    args = p.parse_args(argv)
    out = export_run(args.run_dir, args.out, args.step)
    print(f'{out}: a Hugging Face checkpoint (transformers.AutoModelForCausalLM.from_pretrained)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
