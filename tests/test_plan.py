"""Plans: packing, compile over a model, save/load, and refusing bad files."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import randomize

import disco_jax as dj
from disco_jax.plan import pack_kernel


class TwoLayer(nnx.Module):
    """A tiny model with a conv and a dense DISCO layer."""

    def __init__(self, nodes: int, width: int = 8, k: int = 1, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.conv = dj.DiscoConv(width, width, 3, nodes=nodes, rngs=rngs)
        self.head = dj.DiscoDense(width, 2 * nodes, nodes=nodes, rngs=rngs)
        for index, layer in enumerate((self.conv, self.head)):
            randomize(layer, jax.random.key(seed + index), k)


def test_packed_kernel_holds_own_channels_then_received_ones_in_shift_order():
    spec = dj.LayerSpec("dense", c_in=6, c_out=3, nodes=3)
    # rank-coded weights: kernel[c_in, c_out] = 100 * c_in + c_out
    kernel = 100 * np.arange(6)[:, None] + np.arange(3)[None, :]
    send_idx = np.array([[[1], [0]], [[0], [1]], [[1], [1]]])  # [N, N-1, k=1]
    packed = pack_kernel(spec, kernel, send_idx)
    assert packed.shape == (3, 4, 1)
    # node 1: own inputs 2,3; shift 1 from node 0 sends channel 1 -> input 1;
    # shift 2 from node 2 sends channel 1 -> input 5. Output column 1.
    assert packed[1, :, 0].tolist() == [201, 301, 101, 501]


def test_compile_plan_names_every_disco_layer_by_its_path():
    plan = dj.compile_plan(TwoLayer(nodes=2))
    assert sorted(plan) == ["conv", "head"]
    assert plan.nodes == 2
    assert plan["conv"].k == 1 and plan["conv"].kernel.shape == (2, 3, 3, 5, 4)


def test_compile_refuses_a_mask_that_is_not_exact():
    model = TwoLayer(nodes=2)
    model.head.mask[...] = model.head.mask[...] * 0.5
    with pytest.raises(dj.ConfigError, match="head: the mask is not binary"):
        dj.compile_plan(model)


def test_saved_plan_loads_identical_and_runs_the_same(tmp_path):
    model = TwoLayer(nodes=4, k=2)
    plan = dj.compile_plan(model)
    path = dj.save_plan(plan, tmp_path / "plan")
    loaded = dj.load_plan(path, model)
    assert list(loaded) == list(plan)
    for name in plan:
        for field, value in plan[name].arrays().items():
            np.testing.assert_array_equal(loaded[name].arrays()[field], value)
        assert loaded[name].spec == plan[name].spec
    mesh = dj.make_mesh(4)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))
    np.testing.assert_array_equal(dj.DistributedLayer(plan["conv"], mesh)(x),
                                  dj.DistributedLayer(loaded["conv"], mesh)(x))
    meta = json.loads((path / "plan.json").read_text())
    assert meta["layers"][0]["spec"]["nodes"] == 4  # readable metadata beside the arrays


def test_plan_with_zero_budget_and_single_node_saves_and_loads(tmp_path):
    for nodes, k in [(1, 0), (2, 0)]:
        plan = dj.compile_plan(TwoLayer(nodes=nodes, k=k))
        loaded = dj.load_plan(dj.save_plan(plan, tmp_path / f"plan{nodes}"))
        assert loaded["conv"].send_idx.shape == (nodes, nodes - 1, 0)


def test_loading_against_another_shape_names_the_layer(tmp_path):
    path = dj.save_plan(dj.compile_plan(TwoLayer(nodes=2, width=8)), tmp_path / "plan")
    with pytest.raises(dj.PlanError, match=r"layer conv: the model has a conv 3x3 16->16"):
        dj.load_plan(path, TwoLayer(nodes=2, width=16))
    with pytest.raises(dj.PlanError, match=r"layer conv: .* N=4"):
        dj.load_plan(path, TwoLayer(nodes=4, width=8))


def test_the_payload_is_part_of_the_plan(tmp_path):
    model = TwoLayer(nodes=2, k=1)
    float32 = dj.compile_plan(model)
    dj.set_payload_dtype(model, "int8")
    plan = dj.compile_plan(model)
    assert plan.payload == "int8" and float32.payload == "float32"
    assert dj.plan.plan_checksum(plan) != dj.plan.plan_checksum(float32)
    loaded = dj.load_plan(dj.save_plan(plan, tmp_path / "plan"), model)
    assert [layer.payload for layer in loaded.values()] == ["int8", "int8"]
    assert dj.plan.plan_checksum(loaded) == dj.plan.plan_checksum(plan)
    with pytest.raises(dj.PlanError, match=r"layer conv: the plan sends int8 payloads, the "
                                           r"model's layer reads float32 ones. Call "
                                           r"disco_jax.set_payload_dtype\(model, 'int8'\)"):
        dj.load_plan(tmp_path / "plan", TwoLayer(nodes=2, k=1))
    with pytest.raises(dj.PlanError, match="conv: the plan sends int8 payloads, not bfloat16"):
        dj.DistributedLayer(plan["conv"], dj.make_mesh(2), payload_dtype="bfloat16")
    meta = json.loads((tmp_path / "plan" / "plan.json").read_text())
    meta["layers"][0]["payload"] = "int4"
    (tmp_path / "plan" / "plan.json").write_text(json.dumps(meta))
    with pytest.raises(dj.PlanError, match=r"corrupted or not a disco_jax plan: conv: the "
                                           r"channels that travel can be one of"):
        dj.load_plan(tmp_path / "plan")


def test_loading_against_a_model_with_other_layers_is_refused(tmp_path):
    path = dj.save_plan(dj.compile_plan(TwoLayer(nodes=2)), tmp_path / "plan")
    other = nnx.Dict(stem=dj.DiscoConv(8, 8, 3, nodes=2, rngs=nnx.Rngs(0)))
    with pytest.raises(dj.PlanError, match=r"layers without a plan \['stem'\]"):
        dj.load_plan(path, other)


def test_missing_plan_is_a_clear_error(tmp_path):
    with pytest.raises(dj.PlanError, match="no plan at .*nowhere: plan.json is missing"):
        dj.load_plan(tmp_path / "nowhere")


@pytest.fixture
def saved(tmp_path) -> Path:
    return dj.save_plan(dj.compile_plan(TwoLayer(nodes=2)), tmp_path / "plan")


def test_corrupted_metadata_is_a_clear_error(saved):
    (saved / "plan.json").write_text('{"format": "disco_jax.plan", "lay')
    with pytest.raises(dj.PlanError, match="plan.json is corrupted or not a disco_jax plan"):
        dj.load_plan(saved)


def test_damaged_array_files_are_a_clear_error(saved):
    data_files = [p for p in (saved / "arrays").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for file in data_files:
        raw = bytearray(file.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        file.write_bytes(bytes(raw))
    with pytest.raises(dj.PlanError, match="cannot be read|does not match its checksum"):
        dj.load_plan(saved)


def test_missing_array_folder_is_a_clear_error(saved):
    import shutil

    shutil.rmtree(saved / "arrays")
    with pytest.raises(dj.PlanError, match="cannot be read"):
        dj.load_plan(saved)


def test_changed_array_values_fail_the_checksum(saved, monkeypatch):
    import orbax.checkpoint as ocp

    restore = ocp.StandardCheckpointer.restore

    def tampered(self, *args, **kwargs):
        tree = restore(self, *args, **kwargs)
        tree["layer_0000"]["kernel"] = tree["layer_0000"]["kernel"] + 1.0
        return tree

    monkeypatch.setattr(ocp.StandardCheckpointer, "restore", tampered)
    with pytest.raises(dj.PlanError, match="does not match its checksum"):
        dj.load_plan(saved)


def test_save_refuses_to_overwrite_unless_asked(saved):
    plan = dj.load_plan(saved)
    with pytest.raises(dj.PlanError, match="already exists; pass overwrite=True"):
        dj.save_plan(plan, saved)
    dj.save_plan(plan, saved, overwrite=True)
    dj.load_plan(saved)


def test_a_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        dj.save_plan(dj.compile_plan(TwoLayer(nodes=2)), tmp_path / "plan")
    assert list(tmp_path.iterdir()) == []


def test_a_plan_with_unsorted_or_out_of_range_indices_is_refused():
    plan = dj.compile_plan(TwoLayer(nodes=2, k=2))["conv"]
    for bad in (plan.send_idx[..., ::-1], plan.send_idx + 8):
        with pytest.raises(dj.PlanError, match="send indices must be increasing"):
            dj.LayerPlan(plan.name, plan.spec, plan.k, bad, plan.kernel, plan.bias)
