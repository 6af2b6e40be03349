"""The main job, `python -m experiments.resnet50`, end to end on its --quick settings."""

import json

import helpers
import numpy as np
import pytest

from disco_jax.data import FASHION_MNIST_DIR
from experiments import resnet50

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One --quick run on 2 nodes with a sweep (the default method: DISCO sends
    reduced-rank directions): its exit code, report and folder."""
    return helpers.quick_run(resnet50.main, tmp_path_factory.mktemp("resnet50"),
                             "--sweep", "0,0.5,1")


@pytest.mark.slow
def test_quick_run_passes_its_own_checks(quick_run):
    code, report, _ = quick_run
    assert code == 0
    assert resnet50.verified(report)


@pytest.mark.slow
def test_distributed_predictions_equal_the_single_device_reference(quick_run):
    _, report, _ = quick_run
    dist = report["distributed"]
    assert dist["images"] == report["test_images"] > 0
    assert dist["prediction_mismatches"] == dist["mismatches_that_are_ties"]
    ties = dist["mismatches_that_are_ties"] / dist["images"]
    assert dist["top1"] == pytest.approx(dist["reference_top1"], abs=ties)
    assert report["quality"]["disco"] == dist["reference_top1"]
    assert 0 <= report["max_abs_diff_vs_reference"] <= 1e-4 * max(dist["max_abs_reference"], 1)


@pytest.mark.slow
def test_report_has_the_design_schema_and_the_hlo_bytes_equal_the_plan(quick_run):
    _, report, _ = quick_run
    assert set(report["quality"]) == {"metric", "single", "dense_split", "disco",
                                      "random_mask", "random_directions", "no_comm"}
    assert all(0.0 <= report["quality"][k] <= 1.0 for k in report["quality"] if k != "metric")
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    assert report["comm_reduction"] == pytest.approx(comm["dense_split"] / comm["disco"])
    for variant, entry in report["bytes_plan_vs_budget"].items():
        assert entry["exact"] and entry["plan"] == entry["budget"], variant
    flops, params = report["flops_per_node"], report["params_per_node"]
    assert flops["disco"] < flops["dense_split"] < flops["single"]
    assert params["disco"] < params["dense_split"] < params["single"]


@pytest.mark.slow
def test_every_variant_sees_the_same_steps_from_one_dense_checkpoint(quick_run):
    _, report, folder = quick_run
    steps = report["steps_per_variant"]
    assert steps["total"] == steps["dense"] + steps["prune"] + steps["finetune"]
    assert steps["images"] == steps["total"] * steps["batch_size"]
    run = folder / "run"
    for variant in ("learned", "random", "random_directions", "no_comm", "dense_split"):
        assert (run / variant / "finetune").is_dir(), variant
    assert (run / "plan" / "plan.json").is_file()


@pytest.mark.slow
def test_sweep_and_plots(quick_run):
    _, report, folder = quick_run
    assert [point["comm_ratio"] for point in report["sweep"]] == [0.0, 0.5, 1.0]
    assert [point["variant"] for point in report["sweep"]] == ["no_comm", "sweep", "dense_split"]
    assert report["sweep"][2]["top1"] == report["quality"]["dense_split"]
    comm = report["comm_bytes_per_sample"]
    assert [point["bytes_per_image"] for point in report["sweep"]][::2] == [0, comm["dense_split"]]
    for point in report["sweep"]:
        assert point["verified"] and point["hlo_bytes_per_image"] == point["bytes_per_image"]
        assert (folder / "run" / "sweep" / point["name"] / "plan" / "plan.json").is_file()
    assert 0 < report["sweep"][1]["bytes_per_image"] < comm["dense_split"]
    assert len(report["plots"]) == 2
    for path in report["plots"]:
        with open(path, "rb") as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def series_run(quick_run, tmp_path_factory):
    """The quick run started again in its folder (its variants resume from their
    checkpoints) with a sweep of two series in int8 at rho 0.5, random masks and
    the learned allocation at their bytes (DISCO at the uniform ratio: the quick
    run's float32 sweep): exit code, report, folder and how many models it
    refitted and checked on the mesh."""
    from disco_jax import evaluation, refit

    _, _, folder = quick_run
    path = tmp_path_factory.mktemp("series") / "again.json"
    calls = {"refit": 0, "mesh_check": 0}

    def counted(module, name):
        original = getattr(module, name)

        def call(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return call

    with pytest.MonkeyPatch.context() as patch:
        for module, name in ((refit, "refit"), (evaluation, "mesh_check")):
            patch.setattr(module, name, counted(module, name))
        code = resnet50.main(["--quick", "--mesh", "2", "--sweep", "0.5", "--sweep-series",
                              "allocated,random", "--sweep-payloads", "int8", "--out",
                              str(folder / "run"), "--report", str(path)])
    return code, json.loads(path.read_text()), folder, calls


@pytest.mark.slow
def test_a_run_started_again_resumes_from_its_checkpoints(quick_run, series_run):
    _, report, _ = quick_run
    code, again, _, calls = series_run
    assert code == 0
    assert again["quality"] == report["quality"]
    assert again["quality_at_budget"] == report["quality_at_budget"]
    assert again["max_abs_diff_vs_reference"] == report["max_abs_diff_vs_reference"]
    # the variants load their last checkpoints and their mesh checks: only the
    # two new points are refitted and checked
    assert calls == {"refit": 2, "mesh_check": 2}
    assert again["distributed"] == report["distributed"]  # checked_at included


@pytest.mark.slow
def test_an_int8_sweep_allocates_the_uniform_ratios_bytes_and_verifies(quick_run, series_run):
    _, report, _, _ = series_run
    points = {point["series"]: point for point in report["sweep"]}
    assert sorted(points) == ["allocated", "random"]
    assert all(p["payload_dtype"] == "int8" and p["verified"] for p in points.values())
    uniform, allocated = points["random"], points["allocated"]
    # the learned allocation spends the uniform ratio's bytes, short by < one direction a layer
    assert allocated["budget"]["budget"] == uniform["bytes_per_image"]
    assert allocated["budget"]["exact"]
    assert report["recipe"]["allocation_value"] == "fisher"  # the layers weighed by the loss
    assert allocated["budget"]["budget"] - allocated["budget"]["slack"] < \
        allocated["bytes_per_image"] <= uniform["bytes_per_image"]
    # int8: a quarter of float32's bytes at the same rho, plus a 2-byte scale per channel
    float32 = next(p for p in quick_run[1]["sweep"] if p["comm_ratio"] == 0.5)
    assert float32["bytes_per_image"] / 4 < uniform["bytes_per_image"] < \
        float32["bytes_per_image"] / 3
    assert resnet50.verified(report)


@pytest.mark.slow
def test_a_sweep_point_exports_and_runs_as_the_report_says(series_run, tmp_path, capsys):
    from experiments import export, infer

    _, report, folder, _ = series_run
    point = next(p for p in report["sweep"] if p["series"] == "allocated")
    run = str(folder / "run")
    assert infer.main(["--run", run, "--point", point["name"], "--images",
                       str(report["test_images"])]) == 0
    assert f"top-1 {100 * point['top1']:.2f}" in capsys.readouterr().out
    bundles = tmp_path / "bundles"
    assert export.main(["--run", run, "--point", point["name"], "--out", str(bundles)]) == 0
    assert f"node bundles of the sweep point {point['name']}" in capsys.readouterr().out
    manifest = json.loads((bundles / "node-0" / "manifest.json").read_text())
    assert "int8" in json.dumps(manifest)
    assert infer.main(["--run", run, "--point", "nope"]) == 2
    assert f"has no sweep point 'nope'; it has {point['name']}" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [8])  # 4 nodes: whole networks in tests/test_models.py
def test_quick_run_completes_on_larger_meshes(mesh, tmp_path):
    """On 8 nodes with the earlier default (gradual pruning of channels, no refit);
    ResNet-18 (ResNet-50 traces 2.5x the layers, the same code)."""
    code = resnet50.main(["--quick", "--mesh", str(mesh), "--model", "resnet18",
                          "--prune-steps", "3", "--refit", "none", "--basis", "channels",
                          "--out", str(tmp_path / "run"),
                          "--report", str(tmp_path / "report.json")])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["nodes"] == mesh and len(report["devices"]) == mesh
    assert report["recipe"]["basis"] == "channels" and report["steps_per_variant"]["prune"] == 3
    assert np.isfinite(report["comm_reduction"]) and report["comm_reduction"] > 1


def test_a_mesh_that_does_not_divide_the_channels_is_named(tmp_path, capsys):
    assert resnet50.main(["--quick", "--mesh", "3", "--out", str(tmp_path / "run")]) == 2
    assert "does not divide over 3 nodes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_an_unknown_dataset_is_named(tmp_path, capsys):
    assert resnet50.main(["--quick", "--dataset", "no_such_set",
                          "--out", str(tmp_path / "run")]) == 2
    assert "no_such_set" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_checkpoint_of_another_mesh_is_refused(quick_run, tmp_path, capsys):
    _, _, folder = quick_run
    code = resnet50.main(["--quick", "--mesh", "4", "--init", str(folder / "run" / "dense"),
                          "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "number of nodes" in err and "has shape" in err
    assert not (tmp_path / "run").exists()


def test_an_out_folder_of_other_settings_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "settings.json").write_text(json.dumps({"model": "resnet50", "seed": 7}))
    assert resnet50.main(["--quick", "--out", str(run)]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--comm-ratio", "1.5"], "--comm-ratio must be in [0, 1]"),
    (["--sweep", "0,x"], "--sweep takes comma-separated numbers"),
    (["--sweep", "0.1", "--sweep-series", "learned,best"],
     "--sweep-series must be among allocated, learned, random, got best"),
    (["--sweep", "0.1", "--sweep-payloads", "int4"],
     "--sweep-payloads must be among float32, bfloat16, int8, got int4"),
    (["--sweep", "0.1", "--mesh", "1"], "--sweep trades bytes between nodes"),
    (["--mesh", "0"], "--mesh must be a positive number"),
])
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        resnet50.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_one_process_per_node_gives_the_emulated_mesh_predictions(quick_run, tmp_path):
    """The saved DISCO checkpoint, run by two processes over jax's runtime (gloo),
    against the same checkpoint on a mesh of two emulated devices."""
    import subprocess
    import sys
    from pathlib import Path

    from experiments import infer

    _, _, folder = quick_run
    run = str(folder / "run")
    assert infer.main(["--run", run, "--images", "300", "--batch", "128",
                       "--predictions", str(tmp_path / "mesh.npz")]) == 0
    repo = Path(__file__).resolve().parents[1]
    launched = subprocess.run(
        [sys.executable, "-m", "disco_jax.launch", "--nodes", "2", "--", "experiments.infer",
         "--run", run, "--images", "300", "--batch", "128",
         "--predictions", str(tmp_path / "processes.npz")],
        cwd=repo, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout[-3000:]
    assert "[node 0] learned of" in launched.stdout and "on 2 processes" in launched.stdout
    mesh, processes = np.load(tmp_path / "mesh.npz"), np.load(tmp_path / "processes.npz")
    assert np.array_equal(mesh["labels"], processes["labels"])
    assert len(processes["logits"]) == 300  # three batches, the last one padded
    assert np.array_equal(mesh["logits"].argmax(-1), processes["logits"].argmax(-1))
    np.testing.assert_allclose(processes["logits"], mesh["logits"],
                               atol=1e-5 * np.abs(mesh["logits"]).max())


def _launch_infer(*argv: str, env: dict | None = None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "disco_jax.launch", "--nodes", "2", "--", *argv],
                          cwd=repo, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


@pytest.mark.slow
def test_node_bundles_on_two_processes_each_read_their_own_and_match_the_mesh_bitwise(
        quick_run, tmp_path):
    """The main job's DISCO model exported as per-node bundles: two processes, each
    opening only its own bundle's files, give the emulated mesh's logits bit for bit."""
    import os
    from pathlib import Path

    import chex

    from experiments import export, infer

    _, _, folder = quick_run
    bundles = tmp_path / "bundles"
    assert export.main(["--run", str(folder / "run"), "--out", str(bundles)]) == 0
    assert infer.main(["--bundles", str(bundles), "--images", "300", "--batch", "128",
                       "--predictions", str(tmp_path / "mesh.npz")]) == 0
    tests = str(Path(__file__).resolve().parent)
    launched = _launch_infer(
        "record_opens", str(tmp_path / "opens"), "experiments.infer", "--bundles", str(bundles),
        "--images", "300", "--batch", "128", "--predictions", str(tmp_path / "processes.npz"),
        env={"PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])})
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert "[node 0] " + str(bundles) + " on 2 processes" in launched.stdout
    mesh, processes = np.load(tmp_path / "mesh.npz"), np.load(tmp_path / "processes.npz")
    chex.assert_trees_all_equal(dict(processes), dict(mesh))
    for node in range(2):
        opened = (tmp_path / f"opens-node{node}.txt").read_text().split()
        ours = [path for path in opened if path.startswith(str(bundles))]
        assert ours and all(path.startswith(str(bundles / f"node-{node}") + "/")
                            for path in ours), ours
        assert {Path(path).name for path in ours} == {"manifest.json", "weights.npz"}
        assert not [path for path in opened if path.startswith(str(folder / "run"))]


@pytest.mark.slow
def test_two_nodes_with_bundles_of_different_plans_stop_before_anything_travels(
        quick_run, tmp_path):
    import json
    import shutil

    from experiments import export

    _, _, folder = quick_run
    for variant in ("learned", "random"):
        assert export.main(["--run", str(folder / "run"), "--out", str(tmp_path / variant),
                            "--variant", variant]) == 0
    shutil.rmtree(tmp_path / "learned" / "node-1")
    shutil.copytree(tmp_path / "random" / "node-1", tmp_path / "learned" / "node-1")
    sums = [json.loads((tmp_path / "learned" / f"node-{i}" / "manifest.json").read_text())
            ["plan_checksum"][:16] for i in range(2)]
    assert sums[0] != sums[1]
    launched = _launch_infer("experiments.infer", "--bundles", str(tmp_path / "learned"))
    assert launched.returncode == 1
    assert (f"the nodes do not run the same plan: node 0 has plan {sums[0]}, 2 nodes, float32 "
            f"payloads; node 1 has plan {sums[1]}, 2 nodes, float32 payloads") in launched.stdout
    assert "[Gloo]" not in launched.stdout  # no collective was ever set up


def test_infer_names_a_folder_that_holds_no_run(tmp_path, capsys):
    from experiments import infer

    assert infer.main(["--run", str(tmp_path)]) == 2
    assert "holds no finished run" in capsys.readouterr().err


@pytest.fixture(scope="module")
def directions_run(tmp_path_factory):
    """A --quick run (ResNet-18) over seeds 0 and 1 in which DISCO sends reduced-rank
    directions."""
    return helpers.quick_run(resnet50.main, tmp_path_factory.mktemp("directions"),
                             "--model", "resnet18", "--seeds", "0,1")


@pytest.mark.slow
def test_a_run_over_seeds_reports_each_seed_and_the_paired_differences(directions_run):
    code, report, _ = directions_run
    assert code == 0 and report["verified"]
    assert report["seeds"] == [0, 1] and [r["seed"] for r in report["per_seed"]] == [0, 1]
    for key in ("dense_split", "disco", "random_mask", "random_directions", "no_comm"):
        values = [r["quality"][key] for r in report["per_seed"]]
        assert report["quality"][key]["values"] == values
        assert report["quality"][key]["mean"] == pytest.approx(np.mean(values))
    lead = report["paired"]["disco - random_mask"]
    assert lead["values"] == pytest.approx(
        [100 * (r["quality"]["disco"] - r["quality"]["random_mask"]) for r in report["per_seed"]])
    assert {"disco - random_directions", "disco - no_comm", "disco - dense_split"} <= set(
        report["paired"])
    assert [row["met"] for row in report["targets"]].count(None) == 0


@pytest.mark.slow
def test_disco_sends_directions_that_the_plan_carries_and_the_mesh_runs(directions_run):
    _, report, folder = directions_run
    import disco_jax as dj

    seed0 = report["per_seed"][0]
    assert seed0["recipe"]["basis"] == "directions"
    plan = dj.load_plan(folder / "run" / "seed-0" / "plan")
    sending = [layer for layer in plan.values() if layer.spec.split_input]
    assert sending and all(layer.send_proj is not None for layer in sending)
    # the sender's projections are counted: DISCO's FLOPs per node exceed the packed convs'
    comm = seed0["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    dist = seed0["distributed"]
    assert dist["prediction_mismatches"] == dist["mismatches_that_are_ties"]


@pytest.mark.slow
def test_infer_loads_a_variant_that_sends_directions(directions_run, tmp_path, capsys):
    from experiments import infer

    _, report, folder = directions_run
    seed0 = report["per_seed"][0]
    assert infer.main(["--run", str(folder / "run" / "seed-0"),
                       "--images", str(seed0["test_images"])]) == 0
    assert f"top-1 {100 * seed0['quality']['disco']:.2f}" in capsys.readouterr().out


@pytest.mark.slow
def test_runs_made_apart_summarise_to_the_same_report(directions_run, tmp_path):
    from experiments import seeds

    _, report, folder = directions_run
    runs = [str(folder / "run" / f"seed-{seed}") for seed in (0, 1)]
    assert seeds.main([*runs, "--report", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["paired"] == report["paired"] and again["targets"] == report["targets"]


@pytest.mark.slow
def test_init_loads_the_dense_model_instead_of_training_it(directions_run, tmp_path):
    """Seed 0 of the ResNet-18 run again, its dense model loaded with --init."""
    _, report, folder = directions_run
    code = resnet50.main(["--quick", "--mesh", "2", "--model", "resnet18", "--init",
                          str(folder / "run" / "seed-0" / "dense"), "--out", str(tmp_path / "run"),
                          "--report", str(tmp_path / "r.json")])
    assert code == 0
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["steps_per_variant"]["dense"] is None
    assert again["steps_per_variant"]["init_step"] == 5
    assert not (tmp_path / "run" / "dense").exists()
    # same dense weights, same seeds: the same variants
    assert again["quality"] == report["per_seed"][0]["quality"]


def test_directions_without_the_refit_are_refused(tmp_path, capsys):
    assert resnet50.main(["--quick", "--basis", "directions", "--prune-steps", "2", "--out",
                          str(tmp_path / "run")]) == 2
    assert "needs --prune-steps 0 and --refit lstsq" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_learned_allocation_series_without_directions_is_refused(tmp_path, capsys):
    assert resnet50.main(["--quick", "--basis", "channels", "--refit", "none", "--prune-steps",
                          "2", "--sweep", "0.1", "--sweep-series", "learned,allocated",
                          "--out", str(tmp_path / "run")]) == 2
    assert "allocation 'learned' shares the bytes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_seeds_are_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        resnet50.parse_args(["--seeds", "0,0"])
    assert "names a seed twice" in capsys.readouterr().err


def test_the_default_sends_directions_and_the_earlier_default_is_a_preset():
    default = resnet50.parse_args([])
    assert (default.basis, default.refit, default.prune_steps) == ("directions", "lstsq", 0)
    earlier = resnet50.parse_args(["--preset", "retraining"])
    assert (earlier.basis, earlier.refit, earlier.prune_steps) == ("channels", "none", 60)
    # every variant: 1,200 steps since the faster step (the earlier default: 270)
    assert default.pretrain_steps + default.prune_steps + default.finetune_steps == 1200
    assert earlier.pretrain_steps + earlier.prune_steps + earlier.finetune_steps == 270
