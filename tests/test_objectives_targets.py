"""The prediction rule and the objective registry."""

import numpy as np
import pytest

import jax.numpy as jnp

from dlmjax import config, objectives
from dlmjax.objectives import targets


def test_first_token_of_each_segment_and_padding_are_not_targets():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 0, 0],
                     [3, 4, 4, 4, 4, 4, 4],
                     [0, 0, 0, 0, 0, 0, 0]], jnp.int32)
  want = np.array([[0, 1, 1, 0, 1, 0, 0],
                   [0, 0, 1, 1, 1, 1, 1],
                   [0, 0, 0, 0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(np.asarray(targets.prediction_mask(seg)), want)


def test_special_ids_are_the_shared_contract():
  assert (targets.PAD_ID, targets.BOS_ID, targets.EOS_ID, targets.MASK_ID) == (0, 1, 2, 3)


def test_registry_lists_both_objectives_with_their_attention():
  assert objectives.names() == ('ar', 'mdm')
  assert objectives.get('ar').causal is True
  assert objectives.get('mdm').causal is False
  for name in objectives.names():
    obj = objectives.get(name)
    assert obj.name == name and callable(obj.loss) and callable(obj.nll)


def test_unknown_objective_raises_key_error_listing_the_names():
  with pytest.raises(KeyError, match='ar, mdm'):
    objectives.get('block')


def test_config_validation_accepts_the_registered_names():
  for name in objectives.names():
    assert config.load_config([], [f'objective={name}']).objective == name
