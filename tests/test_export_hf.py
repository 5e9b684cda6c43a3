"""An exported run in transformers itself (make test-extras, the [hf] extra): the AR model's
logits and greedy text match ours, and the MDM's through transformers' bidirectional forward
(its config's is_causal=false)."""

import numpy as np
import pytest

import dlmjax
from dlmjax import export, sample
from test_export import micro_run

torch = pytest.importorskip('torch', reason='the [hf] extra installs torch (make test-extras)')
transformers = pytest.importorskip('transformers', reason='the [hf] extra installs transformers')
pytestmark = pytest.mark.slow  # 2-3 minutes; make test-extras runs it (and make test-slow)

# Held-out text (the validation split is by file; this one is not from the corpus at all).
TEXT = 'class Stack:\n    def push(self, item):\n        self.items.append(item)\n'
SUPPRESSED = list(export.NEVER_PREDICTED)  # -1e9 in ours, the raw projection in a Llama head


@pytest.fixture(scope='module', params=['ar', 'mdm'])
def exported(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(request.param)
  extra = ['model.tie_embeddings=true'] if request.param == 'mdm' else []
  run_dir = micro_run(root / 'run', f'objective={request.param}', *extra)
  out = export.export_run(run_dir, root / 'hf')
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  return dlmjax.load_run(run_dir), model, transformers.AutoTokenizer.from_pretrained(out)


def _ours_vs_theirs(run, model, ids_BxL):
  """Both models' logits at the ids we do not suppress (transformers' forward as loaded: its
  Llama reads the MDM export's is_causal=false and attends bidirectionally)."""
  ours = run.logits(ids_BxL)
  with torch.no_grad():
    theirs = model(torch.tensor(ids_BxL)).logits.numpy()
  keep = np.setdiff1d(np.arange(ours.shape[-1]), SUPPRESSED)
  assert (ours[..., SUPPRESSED] <= -1e9).all()  # fused.suppress_logits
  return ours[..., keep], theirs[..., keep]


def test_transformers_tokenizes_like_the_run(exported):
  run, _, tok = exported
  assert tok.encode(TEXT, add_special_tokens=False) == run.tokenizer.encode(TEXT)
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 3)


def test_logits_match_within_1e_4(exported):
  run, model, _ = exported
  ids = np.array([[1] + run.tokenizer.encode(TEXT)])  # longer than the 32-token training rows
  if not run.causal:
    ids[0, 10:20] = run.tokenizer.mask_id  # what a DLM is asked: fill the masked span
  ours, theirs = _ours_vs_theirs(run, model, ids)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_the_diffusion_export_is_bidirectional_because_its_config_says_so(exported, tmp_path):
  run, model, _ = exported
  if run.causal:
    pytest.skip('AR: causal')
  ids = np.array([[1] + run.tokenizer.encode(TEXT)])
  causal = transformers.AutoModelForCausalLM.from_pretrained(
      model.name_or_path, dtype=torch.float32, is_causal=True).eval()
  ours, theirs = _ours_vs_theirs(run, causal, ids)
  assert np.abs(theirs - ours).max() > 1e-2  # a causal forward of it is not the model


def test_greedy_generation_matches_the_sample_command(exported, capsys):
  run, model, tok = exported
  if not run.causal:
    pytest.skip('transformers generates left to right; the MDM samples by unmasking')
  text = 'def f(x):\n    '
  capsys.readouterr()
  sample.main([str(run.dir.path), 'prompt=def f(x):\\n    ', 'max_new_tokens=24',
               'stop_at_eos=false', 'view=plain'])  # greedy: temperature 0 by default
  ours = capsys.readouterr().out
  prompt = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                         eos_token_id=None)  # generation_config.json suppresses PAD/BOS/MASK
  theirs = text + tok.decode(out[0, len(prompt):].tolist())
  assert ours.rstrip('\n') == theirs.rstrip('\n'), (ours, theirs)
