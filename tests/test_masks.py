"""Masks: exact budgets, deterministic choice, frozen indices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import disco_jax as dj
from disco_jax.masks import indices_to_mask, mask_to_indices, pair_counts


@pytest.mark.parametrize("nodes,group,k", [(1, 3, 0), (2, 5, 0), (2, 5, 2), (4, 4, 4), (8, 3, 1)])
def test_random_mask_reads_exactly_k_channels_per_pair(nodes, group, k):
    mask = dj.random_mask(jax.random.key(0), nodes, group, k)
    counts = pair_counts(mask)
    off = ~np.eye(nodes, dtype=bool)
    assert np.all(counts[off] == k)
    assert np.all(np.diagonal(np.asarray(mask)) == 1)


def test_topk_mask_reads_the_highest_scores_and_breaks_ties_by_index():
    scores = jnp.zeros((2, 2, 4)).at[0, 1].set(jnp.array([0.1, 0.9, 0.5, 0.2]))
    mask = np.asarray(dj.topk_mask(scores, 2))
    assert mask[0, 1].tolist() == [0, 1, 1, 0]
    assert mask[1, 0].tolist() == [1, 1, 0, 0]  # all tied: lowest indices


@given(nodes=st.integers(1, 6), group=st.integers(1, 6), data=st.data())
def test_indices_round_trip_to_the_same_mask(nodes, group, data):
    k = data.draw(st.integers(0, group))
    mask = np.asarray(dj.random_mask(jax.random.key(data.draw(st.integers(0, 99))), nodes,
                                     group, k))
    k_out, indices = mask_to_indices(mask)
    assert indices.shape == (nodes, nodes - 1, k if nodes > 1 else 0)
    assert np.all(np.diff(indices, axis=-1) > 0)  # increasing, unique
    np.testing.assert_array_equal(indices_to_mask(indices, group), mask)


def test_a_soft_mask_cannot_be_frozen():
    mask = np.ones((2, 2, 3), np.float32)
    mask[0, 1, 0] = 0.5
    with pytest.raises(dj.ConfigError, match=r"conv1: the mask is not binary"):
        mask_to_indices(mask, "conv1")


def test_pairs_with_different_budgets_cannot_be_frozen():
    mask = np.ones((2, 2, 3), np.float32)
    mask[0, 1, 0] = 0
    with pytest.raises(dj.ConfigError, match=r"conv1: node pairs read different numbers"):
        mask_to_indices(mask, "conv1")


@pytest.mark.parametrize("k", [-1, 5, 2.5])
def test_k_out_of_range_is_a_clear_error(k):
    with pytest.raises(dj.ConfigError, match=r"k must be an integer in \[0, 4\]"):
        dj.random_mask(jax.random.key(0), 2, 4, k)


def test_comm_ratio_maps_to_k_and_rejects_values_outside_0_1():
    assert dj.k_for_ratio(0.2, 32) == 6
    assert dj.k_for_ratio(1.0, 32) == 32
    assert dj.k_for_ratio(0.0, 32) == 0
    with pytest.raises(dj.ConfigError, match=r"comm ratio must be a number in \[0, 1\]"):
        dj.k_for_ratio(1.5, 32)
