"""The inference form equals the training form, and costs what the plan says.

Property-based over layer shapes, N in {1, 2, 3, 4, 8}, k in [0, C_in/N],
kernels 1 and 3, strides 1 and 2, paddings, dense layers with token axes,
random masks and the three payloads (float32, bfloat16, int8 with scales: the
reference reads the other nodes' channels quantised as the wire delivers them).
Each generated case checks, on one compiled executable
(:func:`disco_jax.verify.verify_layer`):

- distributed output vs single-device masked reference: max |diff| <= 1e-4 x max |ref|;
- bytes of the HLO's collective-permute ops == the plan's bytes, exactly;
- no other collective in the program;
- overlapped (drawn for each case: the product over a node's own channels
  apart from the received ones'), every exchange has a product beside it in
  the compiled program (one it can run while the exchange is in flight);
  computed as one product over own and received channels, none (channels
  sent: nothing but the exchange feeds that product);
- XLA's FLOPs within 5% of the accounting formula (2 per multiply-add; with a
  float32 payload: quantising costs elementwise FLOPs the formula leaves out), except
  for two degenerate products that XLA rewrites as elementwise ops: a
  contraction of length one (counted 1 FLOP per product) and a single output
  position with a single output channel per node, a dot product (counted 2R-1
  FLOPs). Real layers are never degenerate. A conv lowered as taps (maps of a
  few pixels) multiplies every output position by each tap that reads any real
  pixel, padding included, and adds the taps' products: its FLOPs are the
  formula's scaled to those positions, plus the adds. A conv none of whose
  taps reads a real pixel (a 1 x 1 conv, stride 2, padding 1 on a 1 x 1 map)
  is degenerate too: the formula counts no products, the program keeps one
  product of zeros (so the exchange it reads stays in the program).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomize
from hypothesis import event, example, given, settings, strategies as st

import disco_jax as dj
from disco_jax.accounting import _taps, out_spatial
from disco_jax.layers import _conv_geometry, _live_taps, linear, lowering, read_input
from disco_jax.payload import PAYLOADS
from disco_jax.verify import verify_layer

NODES = [1, 2, 3, 4, 8]



def lowered_as_taps(layer, x_shape) -> bool:
    return (layer.spec.kind == "conv"
            and lowering(layer.spec, *x_shape[1:3], layer.compute_dtype) == "taps")


def is_degenerate(layer, k: int, x_shape, overlapped: bool = False) -> bool:
    spec = layer.spec
    widths = ([spec.group_in, (spec.nodes - 1) * k] if overlapped
              else [spec.group_in + (spec.nodes - 1) * k])  # one contraction per product
    area = 1 if lowered_as_taps(layer, x_shape) else spec.kernel**2
    rows = x_shape[0] * np.prod(out_spatial(spec, x_shape[1:-1]))  # output positions
    reads_nothing = spec.kind == "conv" and _taps(spec, x_shape[1:3]) == 0
    return (any(width * area == 1 for width in widths) or (rows == 1 and spec.group_out == 1)
            or reads_nothing)


def expected_flops(layer, formula: float, x_shape, overlapped: bool = False) -> float:
    """The accounting formula's FLOPs per sample, as the layer's lowering
    computes them; ``overlapped``: as two products (own channels, received
    channels) and the add of the two."""
    spec = layer.spec
    spatial = out_spatial(spec, x_shape[1:3]) if spec.kind == "conv" else x_shape[1:-1]
    outputs = int(np.prod(spatial)) * spec.group_out
    if not lowered_as_taps(layer, x_shape):
        return formula + (outputs if overlapped else 0)
    size = x_shape[1:3]
    stride, padding, out_h, out_w = _conv_geometry(spec, *size)
    live = len(_live_taps(spec.kernel, stride, padding, size, (out_h, out_w)))
    bias = outputs if spec.use_bias else 0
    products = (formula - bias) * live * out_h * out_w / _taps(spec, size)
    sums = 2 if overlapped else 1  # each sum of taps, and the add of the two
    return products + sums * (live - 1) * outputs + (sums - 1) * outputs + bias


def check_layer(layer, x, *, tol=1e-4, check_flops=True, overlap=False) -> bool:
    """Asserts the properties above; returns whether FLOPs were compared."""
    check = verify_layer(layer, x, overlap=overlap)
    assert check.relative_diff <= tol, check
    assert check.hlo_comm_bytes == check.costs["disco"].comm_bytes, check
    assert check.other_collectives == []
    exchanges = len(check.overlap)
    degenerate = is_degenerate(layer, check.k, x.shape, overlapped=overlap and exchanges > 0)
    assert exchanges == (layer.spec.nodes - 1 if check.k and layer.spec.split_input else 0)
    if overlap and not degenerate:
        assert min(check.overlap, default=1) >= 1, check  # the own channels' product
    if not overlap and getattr(layer, "basis", None) is None:
        assert check.overlap == [0] * exchanges, check  # one product, after every exchange
    lossy = layer.spec.split_input and layer.payload_dtype != "float32"
    if not check_flops or lossy or degenerate:
        return False
    expected = expected_flops(layer, check.costs["disco"].flops, x.shape,
                              overlapped=overlap and exchanges > 0)
    assert abs(check.hlo_flops - expected) <= 0.05 * expected, check
    return True


@st.composite
def conv_cases(draw):
    nodes = draw(st.sampled_from(NODES))
    group_in = draw(st.integers(1, 5))
    kernel = draw(st.sampled_from([1, 3]))
    padding = draw(st.sampled_from(["SAME", "VALID", 1]))
    return dict(
        nodes=nodes, group_in=group_in, group_out=draw(st.integers(1, 4)),
        k=draw(st.integers(0, group_in)), kernel=kernel,
        stride=draw(st.sampled_from([1, 2])), padding=padding,
        use_bias=draw(st.booleans()), batch=draw(st.integers(1, 3)),
        height=draw(st.integers(kernel, 8)), width=draw(st.integers(kernel, 8)),
        payload=draw(st.sampled_from(PAYLOADS)), overlap=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)))


# 50 cases (~4 s each in CI: a sharded program compiled per case); locally each
# run draws new ones (tests/conftest.py)
@settings(max_examples=50)
@given(conv_cases())
@example(dict(nodes=1, group_in=2, group_out=1, k=0, kernel=1, stride=2, padding=1,
              use_bias=False, batch=1, height=1, width=1, payload="float32",
              overlap=False, seed=0))  # reads padding only
def test_conv_distributed_matches_reference_and_plan(case):
    n = case["nodes"]
    layer = dj.DiscoConv(n * case["group_in"], n * case["group_out"], case["kernel"],
                         strides=case["stride"], padding=case["padding"], nodes=n,
                         use_bias=case["use_bias"], rngs=nnx.Rngs(0))
    key_layer, key_x = jax.random.split(jax.random.key(case["seed"]))
    randomize(layer, key_layer, case["k"])
    dj.set_payload_dtype(layer, case["payload"])
    x = jax.random.normal(key_x, (case["batch"], case["height"], case["width"], layer.spec.c_in))
    checked = check_layer(layer, x, overlap=case["overlap"])
    event("FLOPs checked" if checked else "FLOPs not checked (degenerate)")


@st.composite
def dense_cases(draw):
    group_in = draw(st.integers(1, 6))
    return dict(
        nodes=draw(st.sampled_from(NODES)), group_in=group_in,
        group_out=draw(st.integers(1, 4)), k=draw(st.integers(0, group_in)),
        use_bias=draw(st.booleans()),
        shape=draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)),
        payload=draw(st.sampled_from(PAYLOADS)), overlap=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40)
@given(dense_cases())
def test_dense_distributed_matches_reference_and_plan(case):
    n = case["nodes"]
    layer = dj.DiscoDense(n * case["group_in"], n * case["group_out"], nodes=n,
                          use_bias=case["use_bias"], rngs=nnx.Rngs(0))
    key_layer, key_x = jax.random.split(jax.random.key(case["seed"]))
    randomize(layer, key_layer, case["k"])
    dj.set_payload_dtype(layer, case["payload"])
    x = jax.random.normal(key_x, (*case["shape"], layer.spec.c_in))  # [B, tokens..., C]
    checked = check_layer(layer, x, overlap=case["overlap"])
    event("FLOPs checked" if checked else "FLOPs not checked (degenerate)")


@pytest.mark.parametrize("payload,per_value", [("bfloat16", 2), ("int8", 1)])
@pytest.mark.parametrize("directions", [False, True])
def test_a_narrow_payload_sends_fewer_bytes_and_the_reference_reads_it_alike(
        payload, per_value, directions):
    layer = dj.DiscoConv(16, 8, 3, nodes=4, rngs=nnx.Rngs(0))
    randomize(layer, jax.random.key(1), 2)
    if directions:
        layer.use_basis(jax.random.normal(jax.random.key(3), (4, 4, 4, 4)))
    x = jax.random.normal(jax.random.key(2), (2, 6, 6, 16))
    exact = layer(x)
    dj.set_payload_dtype(layer, payload)
    quantised = layer(x)
    check_layer(layer, x)  # mesh == the quantising reference within 1e-4, HLO bytes == plan
    # 4 * 3 pairs * k = 2 channels * 36 pixels, + a 2-byte scale per int8 channel
    scales = 4 * 3 * 2 * 2 if payload == "int8" else 0
    assert verify_layer(layer, x).hlo_comm_bytes == 4 * 3 * 2 * 36 * per_value + scales
    error = float(jnp.max(jnp.abs(quantised - exact)) / jnp.max(jnp.abs(exact)))
    assert 0 < error < (2e-2 if payload == "int8" else 1e-2)  # the reference quantises


@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("c_in,kernel,stride", [(1, 3, 1), (3, 7, 2)])
def test_layer_on_the_replicated_input_sends_nothing(nodes, c_in, kernel, stride):
    layer = dj.DiscoConv(c_in, 2 * nodes, kernel, strides=stride, nodes=nodes,
                         split_input=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, c_in))
    assert check_layer(layer, x)
    assert dj.layer_costs(layer.spec, 0, (9, 9))["disco"].comm_bytes == 0


# (lowering in bfloat16, conv settings, input channels per node, map size)
LOWERINGS = [
    ("matmul", dict(kernel=1, strides=1, padding="SAME"), 16, 6),
    ("matmul", dict(kernel=1, strides=2, padding="VALID"), 16, 7),  # subsampled, then a product
    ("taps", dict(kernel=3, strides=1, padding="SAME"), 16, 6),
    ("taps", dict(kernel=3, strides=2, padding=1), 16, 7),
    ("taps", dict(kernel=3, strides=2, padding="SAME"), 16, 8),  # SAME pads (0, 1) here
    ("taps", dict(kernel=3, strides=1, padding="VALID"), 16, 6),
    ("conv", dict(kernel=3, strides=1, padding="SAME"), 4, 6),  # too few channels: a stem
    ("conv", dict(kernel=3, strides=1, padding="SAME"), 16, 29),  # map over TAPS_MAX_PIXELS
    ("taps", dict(kernel=1, strides=1, padding=1), 16, 5),  # a padded 1x1: one tap, padded
    ("taps", dict(kernel=3, strides=1, padding="SAME"), 4, 2),  # few channels, but a 2x2 map
]


# every lowering in both inference forms: one product, and overlapped (own channels apart)
FORMS = [(1, False), (2, False), (2, True), (4, True)]


@pytest.mark.parametrize("nodes,overlap", FORMS)
@pytest.mark.parametrize("expected,conv,group_in,size", LOWERINGS)
def test_every_bfloat16_lowering_is_the_same_in_both_forms(nodes, overlap, expected, conv,
                                                            group_in, size):
    layer = dj.DiscoConv(nodes * group_in, nodes * 4, conv["kernel"], strides=conv["strides"],
                         padding=conv["padding"], nodes=nodes, rngs=nnx.Rngs(0))
    randomize(layer, jax.random.key(nodes), group_in // 4)
    dj.set_compute_dtype(layer, "bfloat16")
    assert lowering(layer.spec, size, size, "bfloat16") == expected
    x = jax.random.normal(jax.random.key(7), (2, size, size, layer.spec.c_in))
    # the two forms round the same values to bfloat16: only the sums' order differs
    check_layer(layer, x, check_flops=False, overlap=overlap)


@pytest.mark.parametrize("expected,conv,group_in,size", LOWERINGS)
def test_bfloat16_products_are_the_float32_products_of_rounded_operands(expected, conv,
                                                                        group_in, size):
    spec = dj.LayerSpec("conv", group_in, 8, kernel=conv["kernel"], stride=conv["strides"],
                        padding=conv["padding"])
    keys = jax.random.split(jax.random.key(size), 3)
    x = jax.random.normal(keys[0], (2, size, size, group_in))
    kernel = jax.random.normal(keys[1], spec.kernel_shape)
    bias = jax.random.normal(keys[2], (8,))
    rounded = [a.astype(jnp.bfloat16).astype(jnp.float32) for a in (x, kernel)]
    want = linear(spec, read_input(spec, rounded[0]), rounded[1], bias)  # XLA's conv
    got = linear(spec, read_input(spec, x), kernel, bias, compute_dtype="bfloat16")
    assert lowering(spec, size, size, "bfloat16") == expected
    assert got.shape == want.shape and got.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(got - want))) <= 1e-5 * float(jnp.max(jnp.abs(want)))


# (lowering in float32, conv settings, input channels per node, map size, taps computed)
FLOAT32_LOWERINGS = [
    ("taps", dict(kernel=3, strides=1, padding="SAME"), 8, 2, 9),
    ("taps", dict(kernel=3, strides=2, padding=1), 8, 3, 9),  # 3x3 in, 2x2 out
    ("taps", dict(kernel=3, strides=2, padding="SAME"), 8, 4, 9),  # SAME pads (0, 1) here
    ("taps", dict(kernel=3, strides=1, padding="SAME"), 8, 1, 1),  # only the centre reads a pixel
    ("taps", dict(kernel=3, strides=2, padding="SAME"), 8, 2, 4),  # 2x2 in, 1x1 out
    ("conv", dict(kernel=3, strides=1, padding="SAME"), 8, 3, None),  # 3x3 maps: XLA's conv
    ("conv", dict(kernel=1, strides=1, padding="SAME"), 8, 2, None),  # pointwise: XLA's conv
]


@pytest.mark.parametrize("nodes,overlap", FORMS)
@pytest.mark.parametrize("expected,conv,group_in,size,taps", FLOAT32_LOWERINGS)
def test_float32_convs_on_maps_of_a_few_pixels_are_taps_in_both_forms(
        nodes, overlap, expected, conv, group_in, size, taps):
    layer = dj.DiscoConv(nodes * group_in, nodes * 4, conv["kernel"], strides=conv["strides"],
                         padding=conv["padding"], nodes=nodes, rngs=nnx.Rngs(0))
    randomize(layer, jax.random.key(nodes), group_in // 4)
    assert lowering(layer.spec, size, size) == expected
    if taps is not None:
        stride, padding, out_h, out_w = _conv_geometry(layer.spec, size, size)
        assert len(_live_taps(3, stride, padding, (size, size), (out_h, out_w))) == taps
    x = jax.random.normal(jax.random.key(7), (3, size, size, layer.spec.c_in))
    # mesh == reference, HLO bytes == plan, FLOPs as lowered
    assert check_layer(layer, x, overlap=overlap)


@pytest.mark.parametrize("expected,conv,group_in,size,taps", FLOAT32_LOWERINGS)
def test_float32_taps_equal_xla_convolution(expected, conv, group_in, size, taps):
    spec = dj.LayerSpec("conv", group_in, 8, kernel=conv["kernel"], stride=conv["strides"],
                        padding=conv["padding"])
    keys = jax.random.split(jax.random.key(size), 3)
    x = read_input(spec, jax.random.normal(keys[0], (2, size, size, group_in)))
    kernel, bias = jax.random.normal(keys[1], spec.kernel_shape), jax.random.normal(keys[2], (8,))
    stride, padding, _, _ = _conv_geometry(spec, size, size)
    want = jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    want = want + bias[None, None, None]
    got = linear(spec, x, kernel, bias)
    assert got.shape == want.shape
    assert float(jnp.max(jnp.abs(got - want))) <= 1e-5 * float(jnp.max(jnp.abs(want)))


def test_float32_keeps_one_xla_convolution_and_dense_layers_are_products():
    spec = dj.LayerSpec("conv", 64, 64, kernel=3)
    assert lowering(spec, 7, 7) == "conv" and lowering(spec, 7, 7, "bfloat16") == "taps"
    assert lowering(spec, 2, 2) == "taps" == lowering(spec, 2, 2, "bfloat16")
    assert lowering(dj.LayerSpec("dense", 8, 8), compute_dtype="bfloat16") == "matmul"
    layer = dj.DiscoDense(8, 8, nodes=2, rngs=nnx.Rngs(0))
    randomize(layer, jax.random.key(0), 2)
    dj.set_compute_dtype(layer, "bfloat16")
    check_layer(layer, jax.random.normal(jax.random.key(1), (3, 5, 8)), check_flops=False)


def test_an_unknown_compute_dtype_is_refused():
    layer = dj.DiscoConv(4, 4, 3, nodes=2, rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match=r"one of \['float32', 'bfloat16'\], got 'float16'"):
        dj.set_compute_dtype(layer, "float16")
    dj.set_compute_dtype(layer, jnp.float32)  # float32 is the default, by any name
    assert layer.compute_dtype is None
