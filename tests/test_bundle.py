"""Per-node bundles (disco_jax.bundle): written per node, read back per node, checked."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import TinyNet

import disco_jax as dj
from disco_jax import bundle
from disco_jax.models import ViT


def _mesh_output(distributed, x):
    return np.asarray(distributed.outputs(distributed.compile(x)(*distributed.inputs(x))))


def _tiny_with_directions(nodes, k):
    model = TinyNet(nodes, k)
    model.conv1.use_basis(jax.random.normal(jax.random.key(5),
                                            (*model.conv1.spec.mask_shape,
                                             model.conv1.spec.group_in)))
    return model


@pytest.mark.parametrize("nodes,k,directions", [(2, 2, False), (4, 1, False), (2, 2, True)])
def test_bundles_give_the_same_outputs_bitwise_as_the_model(tmp_path, nodes, k, directions):
    model = _tiny_with_directions(nodes, k) if directions else TinyNet(nodes, k)
    model.eval()
    mesh = dj.make_mesh(nodes)
    x = jax.random.normal(jax.random.key(0), (3, 12, 12, 1))
    expected = _mesh_output(dj.DistributedModel(model, mesh), x)
    folders = bundle.export_bundles(model, dj.compile_plan(model), tmp_path / "b",
                                    settings={"anything": 1})
    assert [f.name for f in folders] == [f"node-{i}" for i in range(nodes)]
    loaded = bundle.load_distributed(tmp_path / "b", mesh, lambda: TinyNet(nodes, k))
    assert loaded.plan is None and loaded.nodes == nodes
    chex.assert_trees_all_equal(_mesh_output(loaded, x), expected)
    if directions:  # the sender's projection travels in the bundle
        assert any(name.endswith("send_proj") for name in bundle.read_bundle(folders[0]).arrays)


def test_each_bundle_holds_its_own_rows_only(tmp_path):
    model = TinyNet(4, 1)
    model.eval()
    plan = dj.compile_plan(model)
    bundle.export_bundles(model, plan, tmp_path / "b", settings={"model": "tiny"})
    _, state = nnx.split(dj.to_inference(model, plan))
    whole = {bundle._leaf_name(path): np.asarray(leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    for node in range(4):
        read = bundle.read_bundle(tmp_path / "b" / f"node-{node}", node)
        assert (read.node, read.nodes, read.settings) == (node, 4, {"model": "tiny"})
        assert read.plan_checksum == dj.plan.plan_checksum(plan)
        assert set(read.arrays) == set(whole)
        for name, value in read.arrays.items():
            chex.assert_trees_all_equal(value, whole[name][node])
        assert read.weights_bytes == sum(v.nbytes for v in whole.values()) // 4


def test_a_vit_bundle_rebuilds_its_layer_norms(tmp_path):
    def build():
        return ViT(image_size=8, patch=4, dim=16, depth=1, heads=4, mlp_ratio=2, classes=5,
                   nodes=2, in_channels=1, pool="cls", rngs=nnx.Rngs(0))

    model = build()
    dj.set_random_masks(model, jax.random.key(1), 0.5)
    model.eval()
    mesh = dj.make_mesh(2)
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    expected = _mesh_output(dj.DistributedModel(model, mesh, output_channels=5), x)
    bundle.export_bundles(model, dj.compile_plan(model), tmp_path / "b")
    loaded = bundle.load_distributed(tmp_path / "b", mesh, build, output_channels=5)
    chex.assert_trees_all_equal(_mesh_output(loaded, x), expected)


@pytest.fixture
def bundles(tmp_path):
    model = TinyNet(2, 2)
    model.eval()
    bundle.export_bundles(model, dj.compile_plan(model), tmp_path / "b")
    return tmp_path / "b"


def test_a_node_given_another_nodes_bundle_is_told(bundles):
    os.rename(bundles / "node-0", bundles / "spare")
    os.rename(bundles / "node-1", bundles / "node-0")
    with pytest.raises(dj.PlanError, match=r"node-0 holds node 1's bundle, but this process is "
                                           r"node 0"):
        bundle.load_distributed(bundles, dj.make_mesh(2), lambda: TinyNet(2, 2))


def test_a_damaged_bundle_is_named(bundles):
    weights = bundles / "node-1" / "weights.npz"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(dj.PlanError, match=r"node-1/weights.npz.*(checksum|cannot be read)"):
        bundle.load_distributed(bundles, dj.make_mesh(2), lambda: TinyNet(2, 2))
    weights.write_bytes(bytes(data[:100]))  # cut short
    with pytest.raises(dj.PlanError, match=r"node-1/weights.npz cannot be read"):
        bundle.read_bundle(bundles / "node-1")
    (bundles / "node-0" / "manifest.json").write_text("{not json")
    with pytest.raises(dj.PlanError, match=r"node-0/manifest.json is damaged"):
        bundle.read_bundle(bundles / "node-0")
    with pytest.raises(dj.PlanError, match=r"no node bundle at .*node-5.*experiments.export"):
        bundle.read_bundle(bundles / "node-5")


def test_bundles_of_two_plans_are_refused_with_both_checksums(tmp_path, bundles):
    other = TinyNet(2, 1)
    other.eval()
    bundle.export_bundles(other, dj.compile_plan(other), tmp_path / "other")
    shutil.rmtree(bundles / "node-1")
    shutil.move(tmp_path / "other" / "node-1", bundles / "node-1")
    sums = [json.loads((bundles / f"node-{i}" / "manifest.json").read_text())["plan_checksum"]
            for i in range(2)]
    with pytest.raises(dj.PlanError, match=rf"{sums[1][:16]} and {sums[0][:16]}"):
        bundle.load_distributed(bundles, dj.make_mesh(2), lambda: TinyNet(2, 2))


def test_the_mesh_the_payload_and_the_network_must_fit(bundles):
    with pytest.raises(dj.PlanError, match=r"for 2 nodes but the mesh is \{'nodes': 4\}"):
        bundle.load_distributed(bundles, dj.make_mesh(4), lambda: TinyNet(2, 2))
    with pytest.raises(dj.PlanError, match="send float32 payloads, not bfloat16"):
        bundle.load_distributed(bundles, dj.make_mesh(2), lambda: TinyNet(2, 2),
                                payload_dtype=jnp.bfloat16)
    with pytest.raises(dj.PlanError, match=r"exported from another network\?\): layer conv1: "
                                           r"the model has a conv 3x3 16->16"):
        bundle.load_distributed(bundles, dj.make_mesh(2), lambda: TinyNet(2, 2, width=16))


def test_an_export_never_leaves_anything_half_written(tmp_path, bundles, monkeypatch):
    model = TinyNet(2, 2)
    model.eval()
    with pytest.raises(dj.PlanError, match="already exists; pass overwrite=True"):
        bundle.export_bundles(model, dj.compile_plan(model), bundles)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(OSError, match="disk full"):
        bundle.export_bundles(model, dj.compile_plan(model), tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("payload", ["bfloat16", "int8"])
def test_a_narrow_payload_is_part_of_the_bundle(tmp_path, payload):
    model = TinyNet(2, 2)
    model.eval()
    mesh = dj.make_mesh(2)
    x = jax.random.normal(jax.random.key(0), (3, 12, 12, 1))
    with pytest.raises(dj.PlanError, match=f"the plan sends float32 payloads, not {payload}"):
        dj.DistributedModel(model, mesh, payload_dtype=payload)
    dj.set_payload_dtype(model, payload)
    expected = _mesh_output(dj.DistributedModel(model, mesh, payload_dtype=payload), x)
    bundle.export_bundles(model, dj.compile_plan(model), tmp_path / "b")
    assert bundle.read_manifest(tmp_path / "b" / "node-1")["payload_dtype"] == payload
    loaded = bundle.load_distributed(tmp_path / "b", mesh, lambda: TinyNet(2, 2))
    chex.assert_trees_all_equal(_mesh_output(loaded, x), expected)
    with pytest.raises(dj.PlanError, match=f"send {payload} payloads, not float32"):
        bundle.load_distributed(tmp_path / "b", mesh, lambda: TinyNet(2, 2),
                                payload_dtype=jnp.float32)
