"""Transformer parts: the inference form equals the training form and costs
what the plan says, LayerNorm statistics included.

For attention, window attention, the MLP, LayerNorm, whole blocks and a whole
ViT, at N in {1, 2, 4} on random shapes (heads divisible by N) with random
exact masks:

- distributed output vs the single-device masked reference: max |diff| <=
  1e-4 x max |reference| (float32);
- bytes of the compiled program's collectives (collective-permutes of the
  DISCO layers + all-reduces of the LayerNorm statistics) == the plan's bytes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import randomize
from hypothesis import given, settings, strategies as st

import disco_jax as dj
from disco_jax import transformer
from disco_jax.mesh import channel_spec, make_mesh, node_spec, shard_channels, shard_nodes
from disco_jax.models import ViT

NODES = [1, 2, 4]


def randomize_model(model, seed: int, ratio: float) -> None:
    """Random weights and exact random masks (k = ratio * C_in/N) in every DISCO
    layer; random LayerNorm scales and biases; random parameters."""
    for index, (_, layer) in enumerate(sorted(dj.disco_layers(model).items())):
        if layer.spec.split_input:
            k = int(round(ratio * layer.spec.group_in))
            randomize(layer, jax.random.key(seed + index), k)
            layer.kernel[...] = layer.kernel[...] / np.sqrt(layer.spec.c_in)
    for index, (_, module) in enumerate(nnx.iter_modules(model)):
        key = jax.random.key(1000 + seed + index)
        if isinstance(module, transformer.LayerNorm):
            module.scale[...] = jax.random.uniform(key, module.scale.shape, minval=0.5, maxval=2)
            module.bias[...] = 0.1 * jax.random.normal(key, module.bias.shape)
        elif isinstance(module, transformer.ChannelParam):
            module.value[...] = jax.random.normal(key, module.value.shape)


def check_distributed(model, x, nodes: int, *, split_input: bool = True) -> None:
    """Runs ``model`` on a mesh and on one device and asserts the properties above."""
    reference = model(x)
    distributed = dj.DistributedModel(model, make_mesh(nodes), output_rank=reference.ndim,
                                      split_input=split_input)
    compiled = distributed.compile(x)
    out = distributed.outputs(compiled(*distributed.inputs(x)))
    assert out.shape == reference.shape
    scale = float(jnp.max(jnp.abs(reference)))
    assert float(jnp.max(jnp.abs(out - reference))) <= 1e-4 * scale
    hlo = compiled.as_text()
    costs = dj.model_costs(model, x.shape)
    assert dj.hlo_comm_bytes(hlo) == costs.totals["disco"].comm_bytes * x.shape[0]
    assert dj.hlo_other_collectives(hlo) == []
    norms = sum(1 for _, m in nnx.iter_modules(model) if isinstance(m, transformer.LayerNorm))
    assert dj.accounting.hlo_all_reduce_bytes(hlo) > 0 if nodes > 1 and norms else True


KINDS = ["attention", "window", "mlp", "block", "window_block"]


@st.composite
def part_cases(draw, kind: str, nodes: int):
    heads = nodes * draw(st.integers(1, 2))
    window = draw(st.sampled_from([2, 3]))
    return dict(nodes=nodes, heads=heads, kind=kind, window=window,
                shift=draw(st.sampled_from([0, window // 2])) if window > 1 else 0,
                head_dim=draw(st.integers(1, 3)), batch=draw(st.integers(1, 2)),
                tokens=draw(st.integers(1, 6)), windows=draw(st.sampled_from([1, 2])),
                ratio=draw(st.sampled_from([0.0, 0.5, 1.0])), seed=draw(st.integers(0, 999)))


def build_part(case):
    dim, n = case["heads"] * case["head_dim"] * 2, case["nodes"]  # heads: a multiple of N
    rngs = nnx.Rngs(case["seed"])
    kind, w = case["kind"], case["window"]
    if kind == "attention":
        part = transformer.Attention(dim, case["heads"], nodes=n, rngs=rngs)
    elif kind == "window":
        part = transformer.WindowAttention(dim, case["heads"], w, shift=case["shift"],
                                           nodes=n, rngs=rngs)
    elif kind == "mlp":
        part = transformer.MLP(dim, 2 * dim, nodes=n, rngs=rngs)
    elif kind == "block":
        part = transformer.Block(dim, case["heads"], mlp_ratio=2, nodes=n, rngs=rngs)
    else:
        part = transformer.WindowBlock(dim, case["heads"], w, shift=case["shift"], mlp_ratio=2,
                                       nodes=n, rngs=rngs)
    if kind in ("window", "window_block"):
        side = w * case["windows"]
        shape = (case["batch"], side, side + w, dim)  # windows of both kinds of image
    else:
        shape = (case["batch"], case["tokens"], dim)
    return part, shape


@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
@settings(max_examples=1)  # one random shape per kind and N: each case compiles a program
def test_parts_distributed_match_reference_and_plan(kind, nodes, data):
    case = data.draw(part_cases(kind, nodes))
    part, shape = build_part(case)
    randomize_model(part, case["seed"], case["ratio"])
    x = jax.random.normal(jax.random.key(case["seed"]), shape)
    check_distributed(part, x, case["nodes"])


@pytest.mark.parametrize("nodes", NODES)
def test_layer_norm_statistics_come_from_one_psum(nodes):
    norm = transformer.LayerNorm(4 * nodes, nodes=nodes)
    randomize_model(norm, 0, 1.0)
    x = 3.0 + jax.random.normal(jax.random.key(1), (2, 5, 4 * nodes))  # mean far from 0
    reference = norm(x)
    np.testing.assert_allclose(  # the two-sums form is LayerNorm
        reference, nnx.LayerNorm(4 * nodes, epsilon=1e-6, rngs=nnx.Rngs(0),
                                 scale_init=lambda *_: norm.scale[...],
                                 bias_init=lambda *_: norm.bias[...])(x), atol=1e-4)
    mesh = make_mesh(nodes)
    graphdef, state = nnx.split(norm.inference_form(nodes, "norm"))
    fn = jax.jit(jax.shard_map(lambda s, v: nnx.merge(graphdef, s)(v), mesh=mesh,
                               in_specs=(node_spec(), channel_spec(3)),
                               out_specs=channel_spec(3)))
    args = shard_nodes(state, mesh), shard_channels(x, mesh)
    compiled = fn.lower(*args).compile()
    assert float(jnp.max(jnp.abs(compiled(*args) - reference))) <= 1e-4 * float(
        jnp.max(jnp.abs(reference)))
    expected = norm.costs(x.shape[1:], nodes)["disco"].comm_bytes * x.shape[0]
    assert expected == nodes * (nodes - 1) * 2 * 5 * 4 * 2  # 2 numbers per token per pair
    assert dj.hlo_comm_bytes(compiled.as_text()) == expected


@pytest.mark.parametrize("nodes,pool", [(1, "mean"), (2, "cls"), (4, "mean")])
def test_vit_distributed_matches_reference_and_plan(nodes, pool):
    model = ViT(image_size=8, patch=4, dim=8 * nodes, depth=1, heads=2 * nodes, mlp_ratio=2,
                classes=5, nodes=nodes, in_channels=1, pool=pool, rngs=nnx.Rngs(0))
    randomize_model(model, 3, 0.5)
    x = jax.random.normal(jax.random.key(2), (3, 8, 8, 1))
    check_distributed(model, x, nodes, split_input=False)
    costs = dj.model_costs(model, x.shape)
    if nodes > 1:  # the LayerNorms' statistics: 2 per token per ordered pair; the block's
        tokens = 4 + (pool == "cls")  # two see every token, the final one the pooled token
        norm_bytes = sum(entry["disco"].comm_bytes for name, entry in costs.others.items()
                         if "norm" in name)
        assert norm_bytes == nodes * (nodes - 1) * 2 * 4 * (2 * tokens + 1)


def test_vit_b16_has_the_standard_parameter_count():
    model = nnx.eval_shape(lambda: ViT(image_size=224, patch=16, dim=768, depth=12, heads=12,
                                       pool="cls", classes=1000, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == 86_567_656


def test_vit_comm_and_memory_per_node_shrink_with_masks():
    model = ViT(image_size=8, patch=2, dim=40, depth=2, heads=4, classes=10, nodes=2,
                in_channels=1, rngs=nnx.Rngs(0))
    dj.set_random_masks(model, jax.random.key(0), 0.2)
    costs = dj.model_costs(model, (1, 8, 8, 1))
    totals = costs.totals
    assert totals["dense_split"].comm_bytes / totals["disco"].comm_bytes >= 4
    assert totals["disco"].params < 0.6 * totals["single"].params
    assert totals["disco"].flops < 0.6 * totals["single"].flops


@pytest.mark.parametrize("build,message", [
    (lambda: transformer.Attention(12, 3, nodes=2, rngs=nnx.Rngs(0)),
     "3 heads do not divide over 2 nodes"),
    (lambda: transformer.Attention(10, 4, nodes=2, rngs=nnx.Rngs(0)),
     "width 10 does not split into 4 heads"),
    (lambda: transformer.LayerNorm(6, nodes=4, name="norm1"),
     "norm1: 6 channels do not divide over 4 nodes"),
    (lambda: ViT(image_size=28, patch=4, dim=30, depth=1, heads=2, nodes=4, rngs=nnx.Rngs(0)),
     "ViT width 30 does not divide over 4 nodes"),
    (lambda: ViT(image_size=28, patch=5, dim=16, depth=1, heads=2, rngs=nnx.Rngs(0)),
     "28 px image does not cut into 5 px patches"),
    (lambda: transformer.WindowAttention(8, 2, 3, shift=3, rngs=nnx.Rngs(0)),
     "0 <= shift < window"),
])
def test_bad_configurations_say_what_to_change(build, message):
    with pytest.raises(dj.ConfigError, match=message):
        build()


def test_bad_inputs_name_the_layer_and_shape():
    attention = transformer.Attention(8, 2, nodes=2, name="blocks/0/attn", rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match=r"blocks/0/attn/qkv: .*C=8, got shape \(2, 3, 6\)"):
        attention(jnp.ones((2, 3, 6)))
    window = transformer.WindowAttention(8, 2, 4, name="win", rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match="win: a 6x8 image does not cut into 4x4 windows"):
        window(jnp.ones((1, 6, 8, 8)))
    model = ViT(image_size=8, patch=4, dim=8, depth=1, heads=2, in_channels=1,
                rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match=r"expected images \[B, 8, 8, C\], got shape"):
        model(jnp.ones((1, 12, 12, 1)))
    distributed = dj.DistributedModel(transformer.MLP(8, 8, nodes=2, rngs=nnx.Rngs(0)),
                                      make_mesh(2), output_rank=3, split_input=True)
    with pytest.raises(dj.ConfigError, match="7 channels .* do not divide over 2 nodes"):
        distributed(jnp.ones((1, 3, 7)))
