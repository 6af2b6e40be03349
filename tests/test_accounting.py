"""Accounting: the formulas on hand-worked layers, and reading compiled HLO."""

import pytest

import disco_jax as dj
from disco_jax.accounting import hlo_permute_bytes, valid_taps


def test_conv_costs_by_hand():
    # 3x3 conv, 8 -> 4 channels, 2 nodes (4 in / 2 out channels each), k = 1, 6x6 input.
    spec = dj.LayerSpec("conv", 8, 4, nodes=2, kernel=3, stride=1, padding="VALID")
    costs = dj.layer_costs(spec, 1, (6, 6))
    taps = 4 * 4 * 9  # VALID: 4x4 outputs, every tap inside
    assert costs["disco"].comm_values == 2 * 1 * 1 * 36
    assert costs["dense_split"].comm_values == 2 * 1 * 4 * 36
    assert costs["disco"].comm_bytes == 4 * 72
    assert costs["disco"].flops == 2 * taps * 2 * (4 + 1) + 16 * 2
    assert costs["dense_split"].flops == 2 * taps * 2 * 8 + 16 * 2
    assert costs["single"].flops == 2 * taps * 4 * 8 + 16 * 4
    assert costs["disco"].params == 9 * 2 * 5 + 2
    assert costs["single"].params == 9 * 8 * 4 + 4
    assert costs["single"].comm_values == 0


def test_full_budget_is_the_dense_split_and_zero_budget_sends_nothing():
    spec = dj.LayerSpec("conv", 16, 16, nodes=4, kernel=3)
    full = dj.layer_costs(spec, 4, (8, 8))
    assert full["disco"] == full["dense_split"]
    assert dj.layer_costs(spec, 0, (8, 8))["disco"].comm_values == 0


def test_strided_1x1_conv_sends_only_the_pixels_it_reads():
    spec = dj.LayerSpec("conv", 8, 8, nodes=2, kernel=1, stride=2)
    costs = dj.layer_costs(spec, 2, (7, 7))
    assert costs["disco"].comm_values == 2 * 1 * 2 * 16  # 4x4 of the 7x7 pixels


def test_dense_layer_counts_tokens():
    spec = dj.LayerSpec("dense", 8, 8, nodes=4)
    assert dj.layer_costs(spec, 1, (10,))["disco"].comm_values == 4 * 3 * 1 * 10
    assert dj.layer_costs(spec, 1, ())["disco"].comm_values == 4 * 3 * 1


@pytest.mark.parametrize("size,kernel,stride,padding,expected", [
    (4, 3, 1, "SAME", 3 * 4 - 2),   # the two border outputs lose one tap each
    (4, 3, 1, "VALID", 2 * 3),
    (5, 3, 2, 1, 3 * 3 - 2),        # outputs at 0, 2, 4: first and last lose a tap
    (4, 1, 2, "SAME", 2),
])
def test_valid_taps_counts_only_taps_inside_the_input(size, kernel, stride, padding, expected):
    assert valid_taps(size, kernel, stride, padding) == expected


def test_permute_bytes_are_read_from_sync_and_async_hlo():
    hlo = """
  %ppermute.3 = f32[4,4,4,3]{3,2,1,0} collective-permute(%x), channel_id=1, source_target_pairs={{0,1},{1,0}}, metadata={}
  %cp-start = (bf16[2,5]{1,0}, bf16[2,5]{1,0}, u32[], u32[]) collective-permute-start(%y), channel_id=2, source_target_pairs={{0,1},{1,2},{2,0}}
  %cp-done = bf16[2,5]{1,0} collective-permute-done(%cp-start)
"""
    assert hlo_permute_bytes(hlo) == 4 * 4 * 4 * 3 * 4 * 2 + 2 * 5 * 2 * 3


def test_all_reduce_bytes_count_every_pair_in_both_group_notations():
    from disco_jax.accounting import hlo_all_reduce_bytes, hlo_comm_bytes

    listed = ("  %psum = f32[3,17,2]{2,1,0} all-reduce(%x), channel_id=1, "
              "replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add")
    iota = ("  %ar = (bf16[5]{0}) all-reduce-start(%y), channel_id=2, "
            "replica_groups=[2,2]<=[4], to_apply=%add")
    assert hlo_all_reduce_bytes(listed) == 3 * 17 * 2 * 4 * 4 * 3
    assert hlo_all_reduce_bytes(iota) == 2 * (5 * 2 * 2 * 1)
    assert hlo_comm_bytes(listed + "\n" + iota) == 3 * 17 * 2 * 4 * 12 + 40
    assert dj.hlo_other_collectives(listed) == []
