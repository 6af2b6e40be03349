"""Networks: standard sizes, and the same definition run on a mesh."""

import jax
import pytest
from flax import nnx
from helpers import relative_error

import disco_jax as dj
from disco_jax.models import ResNet18, ResNet50


def count_params(model) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.slow
@pytest.mark.parametrize("network,expected", [(ResNet50, 25_557_032), (ResNet18, 11_689_512)])
def test_resnets_have_the_standard_parameter_counts(network, expected):
    assert count_params(network(classes=1000, rngs=nnx.Rngs(0))) == expected


def test_stride_sits_on_the_3x3_conv_of_a_bottleneck():
    model = ResNet50(classes=10, width=8, nodes=2, rngs=nnx.Rngs(0))
    first_of_stage2 = model.blocks[3]
    assert first_of_stage2.conv1.spec.stride == 1
    assert first_of_stage2.conv2.spec.stride == 2 and first_of_stage2.conv2.spec.kernel == 3


@pytest.mark.parametrize("network", [ResNet18, ResNet50])
@pytest.mark.parametrize("nodes,classes", [(2, 10), (4, 10)])
def test_small_resnet_runs_on_a_mesh_like_on_one_device(network, nodes, classes):
    model = network(classes=classes, nodes=nodes, in_channels=1, stem="small", width=8,
                    rngs=nnx.Rngs(0))
    dj.set_random_masks(model, jax.random.key(0), 0.25)
    model.eval()
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
    reference = model(x)[:, :classes]
    distributed = dj.DistributedModel(model, dj.make_mesh(nodes), output_channels=classes)
    compiled = distributed.compile(x)
    out = distributed.outputs(compiled(*distributed.inputs(x)))
    assert out.shape == (2, classes)
    assert relative_error(out, reference) <= 1e-4
    hlo = compiled.as_text()
    assert dj.hlo_other_collectives(hlo) == []  # the padded classifier costs no gather
    per_image = dj.model_costs(model, x.shape).totals["disco"].comm_bytes
    assert dj.hlo_permute_bytes(hlo) == 2 * per_image


def test_classifier_pads_to_a_multiple_of_the_nodes():
    model = ResNet18(classes=10, nodes=4, width=8, rngs=nnx.Rngs(0))
    assert model.head.spec.c_out == 12 and model.num_classes == 10


def test_width_that_does_not_divide_over_the_nodes_is_refused():
    with pytest.raises(dj.ConfigError, match="width 12 does not divide over 8 nodes"):
        ResNet18(width=12, nodes=8, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("network", [ResNet18, ResNet50])
def test_zero_init_residual_starts_every_block_as_the_identity(network):
    model = network(classes=10, width=8, in_channels=1, zero_init_residual=True,
                    rngs=nnx.Rngs(0))
    model.eval()
    identity_blocks = [block for block in model.blocks if block.proj is None]
    assert identity_blocks
    for block in identity_blocks:
        shape = (2, 4, 4, block.conv1.spec.c_in)
        x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape))  # a block's input is >= 0
        assert jax.numpy.array_equal(block(x), x)
    plain = network(classes=10, width=8, in_channels=1, rngs=nnx.Rngs(0))
    assert count_params(plain) == count_params(model)
