"""The segmentation network: the node-by-node concatenation, and the whole
network on a mesh against one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import relative_error

import disco_jax as dj
from disco_jax.layers import DiscoConv, NodeConcat
from disco_jax.models import Segmenter


def test_node_concat_keeps_each_nodes_channels_together():
    a = jnp.arange(2 * 6, dtype=jnp.float32).reshape(1, 1, 2, 6)  # 3 nodes x 2 channels
    b = 100 + jnp.arange(2 * 3, dtype=jnp.float32).reshape(1, 1, 2, 3)  # 3 nodes x 1
    joined = NodeConcat(3)(a, b)
    np.testing.assert_array_equal(joined[0, 0, 0], [0, 1, 100, 2, 3, 101, 4, 5, 102])
    with pytest.raises(dj.ConfigError, match="concat: .*divisible by 3 nodes.*\\(1, 1, 2, 4\\)"):
        NodeConcat(3)(a, jnp.zeros((1, 1, 2, 4)))


class SkipNet(nnx.Module):
    """Two branches joined by a skip concatenation, then a DISCO conv."""

    def __init__(self, nodes, plain=False):
        rngs = nnx.Rngs(0)
        self.a = DiscoConv(1, 4, 3, nodes=nodes, split_input=False, rngs=rngs)
        self.b = DiscoConv(4, 2 * nodes, 3, nodes=nodes, rngs=rngs)
        self.join = NodeConcat(nodes)
        self.out = DiscoConv(4 + 2 * nodes, 2 * nodes, 3, nodes=nodes, rngs=rngs)
        self.plain = plain
        dj.set_random_masks(self, jax.random.key(1), 0.5)

    def __call__(self, x):
        a = nnx.relu(self.a(x))
        b = nnx.relu(self.b(a))
        joined = jnp.concatenate([a, b], -1) if self.plain else self.join(a, b)
        return self.out(joined)


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_a_skip_concatenation_runs_on_a_mesh_like_on_one_device(nodes):
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    model = SkipNet(nodes)
    distributed = dj.DistributedModel(model, dj.make_mesh(nodes), output_rank=4)
    assert relative_error(distributed(x), model(x)) <= 1e-4


def test_a_plain_concatenation_gives_the_nodes_other_channels_and_is_caught():
    """Concatenating the global tensors puts every channel of the first
    before the second: on a mesh each node would join other channels than the
    reference does, and the mesh's output differs."""
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    model = SkipNet(2, plain=True)
    distributed = dj.DistributedModel(model, dj.make_mesh(2), output_rank=4)
    assert relative_error(distributed(x), model(x)) > 1e-2


@pytest.mark.parametrize("backbone", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_segmenter_runs_on_a_mesh_like_on_one_device(backbone, nodes):
    classes = 11
    model = Segmenter(backbone, classes=classes, nodes=nodes, width=8, decoder_width=8,
                      rngs=nnx.Rngs(0))
    dj.set_random_masks(model, jax.random.key(0), 0.25)
    model.eval()
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
    reference = model(x)[..., :classes]
    assert reference.shape == (2, 32, 32, classes)
    distributed = dj.DistributedModel(model, dj.make_mesh(nodes), output_rank=4,
                                      output_channels=classes)
    compiled = distributed.compile(x)
    out = distributed.outputs(compiled(*distributed.inputs(x)))
    assert relative_error(out, reference) <= 1e-4
    hlo = compiled.as_text()
    assert dj.hlo_other_collectives(hlo) == []
    per_image = dj.model_costs(model, x.shape).totals["disco"].comm_bytes
    assert dj.hlo_permute_bytes(hlo) == 2 * per_image
    assert (per_image > 0) == (nodes > 1)
    assert model.head.spec.c_out == -(-classes // nodes) * nodes


def test_segmenter_settings_that_cannot_work_are_named():
    with pytest.raises(dj.ConfigError, match="decoder_width 6 does not divide over 4 nodes"):
        Segmenter(classes=11, nodes=4, width=8, decoder_width=6, rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match="width 6 does not divide over 4 nodes"):
        Segmenter(classes=11, nodes=4, width=6, decoder_width=8, rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match="backbone must be one of"):
        Segmenter("vgg", classes=11, rngs=nnx.Rngs(0))
    model = Segmenter(classes=11, nodes=2, width=8, decoder_width=8, rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match="input 48 x 48 does not divide by its stride 32"):
        model(jnp.zeros((1, 48, 48, 1)))
    with pytest.raises(dj.ConfigError, match="backbone \\(classes=None\\).*features"):
        model.backbone(jnp.zeros((1, 64, 64, 1)))
