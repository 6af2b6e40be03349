"""Sending directions instead of channels (CommBasis, send_proj, disco_jax.projections).

A layer with a basis sends ``x_j @ B[i, j][:, chosen]``: the same
specification as channel masks (distributed == training form within 1e-4 x
max |ref|, HLO bytes == plan bytes, FLOPs as counted, the sender's projection
included), plans that save and load with their projections, and the two
choices of directions (reduced-rank, random) as refit hooks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import TinyNet, randomize
from test_equivalence import check_layer

import disco_jax as dj
from disco_jax.errors import ConfigError, PlanError
from disco_jax.projections import choose_directions, random_directions, reduced_rank
from disco_jax.refit import refit

NODES = [1, 2, 4]


def with_random_basis(layer, seed=3):
    spec = layer.spec
    layer.use_basis(jax.random.normal(jax.random.key(seed), (*spec.mask_shape, spec.group_in)))
    return layer


@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, "SAME"), (1, 1, "SAME"),
                                                   (1, 2, "SAME"), (3, 1, "VALID")])
def test_conv_sending_directions_matches_reference_and_plan(nodes, kernel, stride, padding):
    layer = dj.DiscoConv(5 * nodes, 3 * nodes, kernel, strides=stride, padding=padding,
                         nodes=nodes, rngs=nnx.Rngs(0))
    randomize(layer, jax.random.key(1), 2)
    with_random_basis(layer)
    x = jax.random.normal(jax.random.key(2), (2, 7, 7, layer.spec.c_in))
    assert check_layer(layer, x)  # FLOPs include the sender's projections


@pytest.mark.parametrize("nodes", NODES)
@pytest.mark.parametrize("k", [0, 1, 4])
def test_dense_sending_directions_matches_reference_and_plan(nodes, k):
    layer = dj.DiscoDense(4 * nodes, 2 * nodes, nodes=nodes, rngs=nnx.Rngs(0))
    randomize(layer, jax.random.key(1), k)
    with_random_basis(layer)
    x = jax.random.normal(jax.random.key(2), (3, 5, layer.spec.c_in))
    check_layer(layer, x)


def test_the_identity_basis_changes_nothing():
    layer = dj.DiscoConv(8, 6, 3, nodes=2, rngs=nnx.Rngs(0))
    randomize(layer, jax.random.key(1), 2)
    x = jax.random.normal(jax.random.key(2), (2, 5, 5, 8))
    before = layer(x)
    layer.use_basis()
    np.testing.assert_allclose(layer(x), before, rtol=1e-5, atol=1e-5)


def test_projection_costs_are_counted_on_the_sender():
    spec = dj.LayerSpec("conv", 16, 8, nodes=2, kernel=3)
    plain = dj.layer_costs(spec, 3, (6, 6))["disco"]
    sent = dj.layer_costs(spec, 3, (6, 6), projected=True)["disco"]
    assert sent.comm_bytes == plain.comm_bytes
    assert sent.flops - plain.flops == 2 * 36 * 8 * 3   # pixels x C_in/N x (N-1)k
    assert sent.params - plain.params == 8 * 3


@pytest.mark.parametrize("nodes", NODES)
def test_a_network_sending_directions_runs_on_a_mesh_like_on_one_device(nodes):
    model = TinyNet(nodes=nodes, k=2, width=4 * nodes)
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
    refit(model, nnx.clone(model), x, choose=random_directions(0.5, seed=0))
    model.eval()
    reference = model(x)
    distributed = dj.DistributedModel(model, dj.make_mesh(nodes))
    compiled = distributed.compile(x)
    out = distributed.outputs(compiled(*distributed.inputs(x)))
    assert float(jnp.max(jnp.abs(out - reference))) <= 1e-4 * float(jnp.max(jnp.abs(reference)))
    costs = dj.model_costs(model, x.shape)
    assert dj.hlo_comm_bytes(compiled.as_text()) == costs.totals["disco"].comm_bytes * 8
    assert nodes == 1 or all(plan.send_proj is not None for name, plan in
                             dj.compile_plan(model).items() if plan.spec.split_input)


def test_a_plan_with_projections_saves_and_loads_identical(tmp_path):
    layer = with_random_basis(dj.DiscoDense(8, 4, nodes=2, rngs=nnx.Rngs(0)))
    randomize(layer, jax.random.key(1), 2)
    layer.use_basis(jax.random.normal(jax.random.key(3), (2, 2, 4, 4)))
    plan = dj.compile_plan(layer)
    dj.save_plan(plan, tmp_path / "plan")
    loaded = dj.load_plan(tmp_path / "plan")
    for name in plan:
        np.testing.assert_array_equal(loaded[name].send_proj, plan[name].send_proj)
        assert loaded[name].send_proj.shape == (2, 1, 4, 2)


def test_damaged_projections_fail_the_checksum(tmp_path):
    layer = with_random_basis(dj.DiscoDense(8, 4, nodes=2, rngs=nnx.Rngs(0)))
    randomize(layer, jax.random.key(1), 2)
    dj.save_plan(dj.compile_plan(layer), tmp_path / "plan")
    meta_file = tmp_path / "plan" / "plan.json"
    meta = meta_file.read_text()
    sha = __import__("json").loads(meta)["layers"][0]["arrays"]["send_proj"]["sha256"]
    meta_file.write_text(meta.replace(sha, "0" * 64))
    with pytest.raises(PlanError, match="send_proj .* does not match its checksum"):
        dj.load_plan(tmp_path / "plan")


def test_a_plan_of_the_previous_version_still_loads(tmp_path):
    layer = dj.DiscoDense(8, 4, nodes=2, rngs=nnx.Rngs(0))
    randomize(layer, jax.random.key(1), 2)
    dj.save_plan(dj.compile_plan(layer), tmp_path / "plan")
    meta_file = tmp_path / "plan" / "plan.json"
    meta_file.write_text(meta_file.read_text().replace('"version": 2', '"version": 1'))
    loaded = dj.load_plan(tmp_path / "plan")
    assert all(plan.send_proj is None for plan in loaded.values())


def test_a_basis_of_the_wrong_shape_or_on_the_replicated_input_is_refused():
    layer = dj.DiscoConv(8, 4, 3, nodes=2, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"basis is \[N, N, C_in/N, C_in/N\] = \(2, 2, 4, 4\)"):
        layer.use_basis(jnp.zeros((2, 2, 4, 3)))
    stem = dj.DiscoConv(1, 4, 3, nodes=2, split_input=False, rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="replicated network input sends nothing"):
        stem.use_basis()


def test_every_direction_read_is_the_same_function():
    layer = dj.DiscoConv(8, 6, 3, nodes=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 6, 6, 8))
    before = layer(x)
    reduced_rank(1.0)("layer", layer, x, nnx.clone(layer))
    assert layer.basis is not None
    np.testing.assert_allclose(layer(x), before, rtol=1e-4, atol=1e-4 * float(
        jnp.max(jnp.abs(before))))


def test_reduced_rank_finds_the_directions_the_receiver_needs():
    # sender 1 holds 4 channels, but receiver 0's outputs read them through one
    # direction: one reduced-rank direction carries all of it, one channel cannot
    layer = dj.DiscoDense(8, 4, nodes=2, use_bias=False, rngs=nnx.Rngs(0))
    kernel = np.asarray(layer.kernel[...]).copy()
    direction = np.array([1.0, -2.0, 0.5, 3.0])
    kernel[4:, :2] = direction[:, None] * np.array([[1.0, -1.0]])
    layer.kernel[...] = jnp.asarray(kernel)
    x = jax.random.normal(jax.random.key(1), (512, 8))
    errors = {}
    for name, choose in (("reduced_rank", reduced_rank(0.25, ridge=1e-9)),
                         ("random_directions", random_directions(0.25, seed=0))):
        model = nnx.clone(layer)
        refit(model, layer, x, choose=choose, ridge=1e-9)
        errors[name] = float(jnp.linalg.norm(model(x)[:, :2] - layer(x)[:, :2])
                             / jnp.linalg.norm(layer(x)[:, :2]))
    channels = nnx.clone(layer)
    channels.mask[...] = dj.random_mask(jax.random.key(0), 2, 4, 1)
    refit(channels, layer, x, ridge=1e-9)
    errors["channels"] = float(jnp.linalg.norm(channels(x)[:, :2] - layer(x)[:, :2])
                               / jnp.linalg.norm(layer(x)[:, :2]))
    assert errors["reduced_rank"] < 1e-4
    assert errors["random_directions"] > 0.1 and errors["channels"] > 0.1


def test_random_directions_are_orthogonal_seeded_and_sent_at_the_channels_scale():
    layer = dj.DiscoConv(12, 4, 1, nodes=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 3, 3, 12))
    first, second, other = (nnx.clone(layer) for _ in range(3))
    random_directions(0.5, seed=0)("a", first, x, layer)
    random_directions(0.5, seed=0)("a", second, x, layer)
    random_directions(0.5, seed=1)("a", other, x, layer)
    basis = np.asarray(first.basis[...], np.float64)[0, 1]
    gram = basis.T @ basis
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-4)
    sender = np.asarray(x, np.float64)[..., 6:].reshape(-1, 6)  # node 1 sends to node 0
    np.testing.assert_allclose(np.sqrt(np.mean((sender @ basis) ** 2, axis=0)),
                               np.sqrt(np.mean(sender ** 2)), rtol=1e-4)
    np.testing.assert_array_equal(first.basis[...], second.basis[...])
    assert not np.allclose(first.basis[...], other.basis[...])
    assert int(np.asarray(first.mask[...])[0, 1].sum()) == 3


def test_an_unknown_choice_of_directions_is_named():
    with pytest.raises(ConfigError, match="unknown choice of directions 'best'"):
        choose_directions("best", 0.2)
