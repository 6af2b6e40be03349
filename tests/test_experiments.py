"""The experiment entry points, run end to end on small settings."""

import json

import chex
import pytest

from disco_jax.payload import reference_tolerance
from experiments import plan_check


@pytest.mark.slow
def test_plan_check_reports_matching_bytes_and_outputs(tmp_path, capsys):
    report_path = tmp_path / "report.json"
    code = plan_check.main(["--model", "resnet18", "--mesh", "2", "--batch", "2",
                            "--image-size", "16", "--report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    assert report["comm_reduction"] == pytest.approx(comm["dense_split"] / comm["disco"])
    assert report["quality"]["disco"] is None  # random masks: accuracy not measured
    assert "reduction" in capsys.readouterr().out
    # the same masks sent as int8 with their scales: the reference quantises alike
    assert plan_check.main(["--model", "resnet18", "--mesh", "2", "--batch", "2",
                            "--image-size", "16", "--payload-dtype", "int8",
                            "--report", str(report_path)]) == 0
    int8 = json.loads(report_path.read_text())
    assert int8["payload_dtype"] == "int8" and "int8 payload" in capsys.readouterr().out
    sent = int8["comm_bytes_per_sample"]
    assert sent["disco_hlo"] == sent["disco"] < comm["disco"] / 2
    assert sent["dense_split"] == comm["dense_split"]  # the baseline stays float32
    assert int8["same_predictions"]
    assert int8["max_abs_diff_vs_reference"] <= reference_tolerance("int8") * max(
        int8["max_abs_reference"], 1.0)


def test_plan_check_names_a_bad_mesh_size(capsys):
    assert plan_check.main(["--model", "resnet18", "--mesh", "3", "--image-size", "8"]) == 2
    assert "does not divide over 3 nodes" in capsys.readouterr().err


@pytest.mark.slow
def test_mask_training_quick_run_writes_a_report_with_exact_budgets(tmp_path):
    import jax

    from disco_jax.data import FASHION_MNIST_DIR
    from experiments import mask_training

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist (CI installs it)")
    report_path = tmp_path / "masks.json"
    with jax.numpy_dtype_promotion("standard"):
        assert mask_training.main(["--quick", "--channels", "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert set(report["bytes_plan_vs_budget"]) == {"learned", "random", "no_comm",
                                                   "dense_split"}
    for variant, entry in report["bytes_plan_vs_budget"].items():
        assert entry["exact"] and entry["plan"] == entry["budget"], variant
    assert report["bytes_plan_vs_budget"]["no_comm"]["plan"] == 0
    for when in ("quality", "quality_at_budget"):
        assert set(report[when]) == {"metric", "single", "dense_split", "disco", "random_mask",
                                     "no_comm"}
        assert 0.0 <= report[when]["disco"]["mean"] <= 1.0
    assert report["steps_per_variant"]["total"] == 30
    assert report["comm_reduction"] > 1


@pytest.mark.slow
def test_mask_training_with_directions_compares_random_channels_and_directions(tmp_path):
    import jax

    from disco_jax.data import FASHION_MNIST_DIR
    from experiments import mask_training

    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("apt-get install dataset-fashion-mnist (CI installs it)")
    report_path = tmp_path / "masks.json"
    with jax.numpy_dtype_promotion("standard"):
        assert mask_training.main(["--quick", "--directions", "--calibration-images", "64",
                                   "--distill", "0.5", "--payload-dtype", "int8",
                                   "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["recipe"]["basis"] == "directions" and report["recipe"]["distill"] == 0.5
    assert report["payload_dtype"] == "int8"  # plans and budgets in int8 + scales
    assert set(report["bytes_plan_vs_budget"]) == {"learned", "random", "no_comm",
                                                   "dense_split", "random_directions"}
    for variant, entry in report["bytes_plan_vs_budget"].items():
        assert entry["exact"] and entry["plan"] == entry["budget"], variant
    assert "random_directions_finetuned" in report["disco_minus"]
    judged = [row["what"] for row in report["targets"]]
    assert any("random directions" in what for what in judged), judged
    assert not any(row["met"] for row in report["targets"])  # one seed is not evidence
    assert report["steps_per_variant"]["prune"] == 0  # masks set at once
    assert report["steps_per_variant"]["total"] == 20


def _seed_report(seed, lead, gap, **changes):
    """A mask_training report of one seed: DISCO ``lead`` points above random
    channels and ``gap`` points from the dense split."""
    from experiments.compare import stats

    return {"model": "resnet18", "nodes": 2, "seeds": [seed], "wall_seconds": 100.0,
            "quality": {"metric": "top1", "disco": stats([0.9 + seed / 100])},
            "disco_minus": {"random_finetuned": stats([lead / 100]),
                            "dense_split_finetuned": stats([gap / 100])}} | changes


def test_mask_training_merges_seeds_run_apart_in_seed_order_with_targets(tmp_path, capsys):
    from disco_jax.errors import ConfigError
    from experiments import mask_training

    paths = []
    for seed, lead, gap in ((2, 0.6, -0.7), (0, 0.4, -0.5), (1, 0.5, -0.6)):
        paths.append(tmp_path / f"seed{seed}.json")
        paths[-1].write_text(json.dumps(_seed_report(seed, lead, gap)))
    merged = mask_training.merge(paths)
    assert merged["seeds"] == [0, 1, 2] and merged["wall_seconds"] == 300.0
    assert merged["quality"]["disco"]["values"] == pytest.approx([0.90, 0.91, 0.92])
    lead = merged["disco_minus"]["random_finetuned"]
    assert lead["values"] == pytest.approx([0.004, 0.005, 0.006])
    assert lead["std"] == pytest.approx(0.001)
    targets = {row["what"]: row["met"] for row in merged["targets"]}
    assert targets == {"DISCO within 1.0 point of the dense split, every seed and mean - 2 SE":
                       True, "DISCO above random masks at the same bytes by > 2 SE": True}
    # a lead inside two standard errors is not met; a seed beyond the gap fails the gap
    paths[0].write_text(json.dumps(_seed_report(2, -0.5, -1.2)))
    targets = {row["what"]: row["met"] for row in mask_training.merge(paths)["targets"]}
    assert not any(targets.values())
    paths[0].write_text(json.dumps(_seed_report(2, 0.6, -0.7, nodes=4)))
    with pytest.raises(ConfigError, match="nodes differs"):
        mask_training.merge(paths)
    paths[0].write_text(json.dumps(_seed_report(1, 0.6, -0.7)))
    with pytest.raises(ConfigError, match="share a seed"):
        mask_training.merge(paths)
    paths[0].write_text("{not json")
    assert mask_training.main(["--merge", *map(str, paths)]) == 2
    assert f"cannot read the report {paths[0]}" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["learned", "dense_split"])
def test_every_variant_distils_from_the_dense_model_it_starts_from(variant, monkeypatch):
    """Schedule(distill=w): both phases of every variant train with the dense
    model as the teacher (the dense model is left as it was)."""
    import jax
    import numpy as np
    from flax import nnx
    from helpers import TinyNet

    import disco_jax as dj
    from disco_jax import train as train_module
    from disco_jax.data import Split
    from disco_jax.train import Distillation
    from experiments.compare import Schedule, train_variant

    dense = TinyNet(2, 0, classes=4)
    for layer in dj.disco_layers(dense).values():
        if layer.spec.split_input:
            layer.mask[...] = dj.dense_mask(2, layer.spec.group_in)
    rng = np.random.default_rng(0)
    split = Split(rng.normal(size=(64, 12, 12, 1)).astype(np.float32),
                  rng.integers(0, 4, 64).astype(np.int32))
    seen, real = [], train_module.train

    def spy(*args, **kwargs):
        seen.append((kwargs.get("teacher"), kwargs.get("distill"), kwargs["description"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", spy)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(dense)))
    schedule = Schedule(prune_steps=2, finetune_steps=2, batch_size=16, distill=0.3,
                        distill_temperature=2.0)
    with jax.numpy_dtype_promotion("standard"):
        train_variant(dense, variant, 0.5, schedule, 0, split, lambda model: 0.0, 4)
    assert [description.split()[-1] for *_, description in seen] == ["prune", "fine-tune"]
    for teacher, distill, _ in seen:
        assert teacher is dense and distill == Distillation(0.3, 2.0)
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(dense)))
    chex.assert_trees_all_equal(before, after)  # the teacher is untouched


def test_a_distillation_weight_outside_0_1_is_refused():
    from disco_jax.errors import ConfigError
    from experiments.compare import Schedule

    with pytest.raises(ConfigError, match="weight must be in"):
        Schedule(prune_steps=0, finetune_steps=1, distill=2.0)


def test_straight_through_masks_come_with_baselines_exact_from_the_same_step():
    from disco_jax import sparsify
    from experiments.compare import Schedule, mask_method

    schedule = Schedule(prune_steps=40, finetune_steps=10, importance="straight_through")
    learned = mask_method("learned", 0.2, schedule, seed=3, start=100)
    assert isinstance(learned, sparsify.StraightThroughTopK)
    assert (learned.start, learned.end, learned.comm_ratio) == (100, 140, 0.2)
    for variant, kind in (("random", "random"), ("no_comm", "no_comm"),
                          ("dense_split", "dense_split")):
        method = mask_method(variant, 0.2, schedule, seed=3, start=100)
        assert isinstance(method, sparsify.FixedMask) and method.kind == kind, variant
        assert method.start == 100 and (kind != "random" or method.seed == 3)


def test_mask_training_runs_each_mesh_size_s_recipe_unless_told_otherwise():
    from experiments import mask_training

    two, four = mask_training.parse_args(["--mesh", "2"]), mask_training.parse_args(["--mesh", "4"])
    assert (two.directions, two.finetune_steps) == (True, 150)
    assert (four.directions, four.finetune_steps) == (False, 300)
    told = mask_training.parse_args(["--mesh", "4", "--directions", "--finetune-steps", "450"])
    assert (told.directions, told.finetune_steps) == (True, 450)
    assert mask_training.parse_args(["--mesh", "2", "--channels"]).directions is False
