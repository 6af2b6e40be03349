"""The network benchmark, end to end on a tiny case (32 px ResNet-18, one repeat).

Its figures mean nothing at this size; the test checks the mechanics: two
launched node processes, the rate-limited namespace when the test runs as
root (CI does), the report's schema, and that no namespace is left behind.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import network, single
from benchmarks.latency import rate_bits
from benchmarks.profile import EXCHANGES

REPO = Path(__file__).resolve().parents[1]


def _namespaces() -> str:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return listed.stdout if listed.returncode == 0 else ""


@pytest.mark.slow
def test_tiny_benchmark_writes_the_report_and_cleans_up(tmp_path):
    report_path = tmp_path / "network.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.network", "--models", "resnet18", "--image-size",
         "32", "--batches", "1", "--repeats", "1", "--rates", "100mbit", "--overlap",
         "--report", str(report_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    shaped = network.can_shape_links() is None
    (run,) = report["runs"]
    assert run["model"] == "resnet18" and run["nodes"] == 2 and run["batch"] == 1
    rates = [link["rate"] for link in run["links"]]
    assert rates == (["100mbit", "unlimited"] if shaped else ["unlimited"])
    for link in run["links"]:
        assert link["single_ms"] > 0 and link["dense_split_ms"] > 0 and link["disco_ms"] > 0
        assert link["speedup_vs_dense_split"] == pytest.approx(
            link["dense_split_ms"] / link["disco_ms"])
        assert set(link["spread_ms"]) == {"single", "dense_split", "disco", "disco_int8",
                                          "disco_overlap"}
        disco = link["where_the_time_goes"]["disco"]
        assert disco["messages"] > 0
        # overlapped: the same exchanges, each with its layer's own product beside it
        overlapped = link["where_the_time_goes"]["disco_overlap"]
        assert overlapped["messages"] == overlapped["messages_with_work_beside"] == disco[
            "messages"] > disco["messages_with_work_beside"]
        assert link["overlapped"]["speedup_vs_single"] == pytest.approx(
            link["single_ms"] / link["overlapped"]["disco_ms"])
        int8 = link["payloads"]["int8"]  # the same channels, as int8 with their scales
        assert int8["speedup_vs_dense_split"] == pytest.approx(
            link["dense_split_ms"] / int8["disco_ms"])
        assert link["where_the_time_goes"]["disco_int8"]["messages"] == disco["messages"]
    sent = run["comm_bytes_per_image"]
    assert sent["disco_int8"] < sent["disco"] / 3 < sent["dense_split"] / 3
    assert run["links"][0]["payloads"]["int8"]["bytes_ratio_vs_dense_split"] == (
        sent["dense_split"] / sent["disco_int8"])
    # the single-node row is the faster of disco_jax's two single-device programs
    programs = run["single"]["programs_ms"]
    assert set(programs) == {"inference_form", "training_form"}
    assert run["single"]["ms"] == min(programs.values()) == run["links"][0]["single_ms"]
    assert run["single"]["program"] == min(programs, key=programs.get)
    for name in ("onnxruntime", "tensorflow"):  # timed, or saying why not
        row = run["references"][name]
        assert row.get("ms", 0) > 0 or "not installed" in row["status"] or (
            name == "tensorflow" and row["status"] == "Keras has no standard resnet18")
    if shaped:  # 1 MB each way through one 100 Mbit/s queue: at least 160 ms
        assert run["links"][0]["exchange_1mb_ms"] > 150 > run["links"][1]["exchange_1mb_ms"]
    assert report_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "disco-bench" not in _namespaces()


def test_link_rates_are_read_as_tc_writes_them():
    assert rate_bits("100mbit") == 1e8
    assert rate_bits("1gbit") == 1e9
    assert rate_bits("unlimited") is None
    with pytest.raises(ValueError, match="like 100mbit"):
        rate_bits("fast")


def test_a_bad_rate_is_refused(capsys):
    with pytest.raises(SystemExit):
        network.parse_args(["--rates", "100mb"])
    assert "like 100mbit" in capsys.readouterr().err


@pytest.mark.parametrize("payloads,says", [("float32,int4", "distinct names among"),
                                           ("int8", "starts with float32")])
def test_bad_payloads_are_refused(capsys, payloads, says):
    with pytest.raises(SystemExit):
        network.parse_args(["--payloads", payloads])
    assert says in capsys.readouterr().err


@pytest.mark.slow
def test_the_memory_benchmark_measures_every_node_from_its_own_bundle(tmp_path):
    report_path = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--model", "resnet18", "--image-size", "32",
         "--nodes", "2", "--report", str(report_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    rows = {(r["form"], r["nodes"], r["node"]): r for r in report["rows"]}
    assert set(rows) == {("single", 1, 0), ("dense_split", 2, 0), ("dense_split", 2, 1),
                         ("disco", 2, 0), ("disco", 2, 1)}
    single = rows["single", 1, 0]
    for node in (0, 1):
        dense, disco = rows["dense_split", 2, node], rows["disco", 2, node]
        # the dense split halves the weights (the classifier's padding aside); DISCO keeps
        # its own block and the weights of the channels it receives
        assert dense["weights_device_bytes"] == pytest.approx(
            single["weights_device_bytes"] / 2, rel=0.01)
        assert disco["weights_device_bytes"] < 0.35 * single["weights_device_bytes"]
    for row in rows.values():
        assert row["weights_disk_bytes"] >= row["weights_device_bytes"]  # + the npz headers
        assert row["peak_bytes"] > row["runtime_peak_bytes"] > 100 * 2**20  # jax's own
        assert row["model_share_bytes"] == row["peak_bytes"] - row["runtime_peak_bytes"]
        assert row["first_peak_bytes"] > 0
    assert [t["met"] for t in report["targets"]][0] is True and len(report["targets"]) == 3
    assert "deployed (program loaded, not compiled)" in done.stdout


def test_an_engine_that_is_not_installed_says_how_to_install_it():
    note = single._missing("json", "no_such_engine_module")
    assert note == 'no_such_engine_module not installed (pip install -e ".[bench]")'
    assert single._missing("json") is None


def test_onnx_runtime_runs_the_same_function_as_disco_jax(tmp_path):
    """The ONNX Runtime row times disco_jax's own single-device program, exported."""
    for module in ("onnxruntime", "onnx", "jax2onnx"):
        pytest.importorskip(module, reason='the reference engines: pip install -e ".[bench]"')
    args = single.parse_args(["--model", "resnet18", "--image-size", "32", "--batches", "2",
                              "--repeats", "1", "--engines", "disco_jax,onnxruntime",
                              "--out", str(tmp_path / "single.json")])
    report = single.run(args)
    check = report["engines"]["onnxruntime"]["versus_disco_jax"]["2"]
    assert check["max_abs_diff"] <= 1e-4 * check["max_abs_output"]
    assert report["engines"]["onnxruntime"]["timings"]["2"]["median_ms"] > 0


def test_the_profile_names_every_conv_and_product_of_the_program(tmp_path):
    """Each conv layer lowered as one XLA convolution is a row named by its shape
    (ONNX Runtime's, with the [bench] extra, the same rows); the classifier a product."""
    from flax import nnx

    from benchmarks import profile
    from disco_jax.layers import DiscoConv, lowering, read_input, record_inputs

    argv = ["--model", "resnet18", "--image-size", "32", "--batch", "2", "--repeats", "2",
            "--xla-defaults", "--out", str(tmp_path / "profile.json")]  # flags: test_mesh
    args = profile.parse_args(argv)
    assert profile.main(argv) == 0
    report = json.loads(args.out.read_text())
    model, _ = single.single_device_forms(args)
    with record_inputs() as inputs:
        model(single._input(args, 2))
    expected = {}
    for _, layer in nnx.iter_modules(model):
        if isinstance(layer, DiscoConv):
            x = read_input(layer.spec, inputs[id(layer)])  # a strided 1x1 conv subsamples
            # (a 1x1 conv is named as the product it is: the KxK ones are compared)
            if layer.spec.kernel > 1 and lowering(layer.spec, *x.shape[1:3]) == "conv":
                y = layer(inputs[id(layer)])
                key = profile.conv_key(layer.spec.kernel, x.shape[1:3], layer.spec.c_in,
                                       y.shape[1:3], layer.spec.c_out)
                expected[key] = expected.get(key, 0) + 1
    rows = report["engines"]["disco_jax"]["rows"]
    convs = {key: row["count"] for key, row in rows.items()
             if key.startswith("conv") and not key.startswith("conv 1x1")}
    assert convs == expected and len(expected) >= 3
    assert "matmul 2x512 @ 512x1000" in rows  # the classifier
    assert all(row["ms"] > 0 for row in rows.values())
    onnx = report["engines"]["onnxruntime"]
    if "rows" in onnx:
        assert {key: row["count"] for key, row in onnx["rows"].items()
                if key.startswith("conv") and not key.startswith("conv 1x1")} == expected
    else:
        assert "not installed" in onnx["status"]


def test_the_node_profile_traces_every_node_in_its_own_process(tmp_path):
    """Two launched nodes, each tracing its own program: every exchange of the
    plan is a traced collective-permute, the convs are named as in the single
    device's profile, and each node's CPU per call is read from its threads."""
    out = tmp_path / "nodes.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile", "--model", "resnet18", "--image-size", "32",
         "--classes", "10", "--batch", "2", "--repeats", "2", "--nodes", "2", "--unpinned",
         "--overlap", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [node["node"] for node in report["nodes"]] == [0, 1]
    for node in report["nodes"]:
        assert set(node["variants"]) == {"dense_split", "disco", "disco_overlap"}
        for variant in node["variants"].values():
            rows = variant["rows"]
            assert rows[EXCHANGES]["count"] == variant["messages"] > 10
            assert any(key.startswith("conv 3x3/1 ") for key in rows)
            assert all(row["ms"] >= 0 for row in rows.values())
            assert variant["wall_ms"] > 0 and len(variant["wall_times_ms"]) == 2
            assert variant["cpu_per_call"]["process_ms"] > 0  # (threads: clock ticks, may be 0)
            assert 0 <= variant["products_during_exchanges_ms"] <= variant["wall_ms"]
        assert node["variants"]["disco"]["hlo_bytes"] < node["variants"]["dense_split"]["hlo_bytes"]
    assert "exchanges" in done.stdout and "disco" in done.stdout


def test_time_together_is_the_overlap_of_two_sets_of_intervals():
    from benchmarks.profile import time_together

    assert time_together([(0, 10), (20, 30)], [(5, 25)]) == 10  # 5..10 and 20..25
    assert time_together([(0, 10), (2, 12)], [(11, 20), (0, 1)]) == 2  # unions first
    assert time_together([(0, 10)], [(10, 20)]) == 0 == time_together([], [(0, 1)])


def test_the_profile_refuses_nodes_it_cannot_pin(capsys, tmp_path):
    from benchmarks import profile

    out = tmp_path / "nodes.json"
    assert profile.main(["--nodes", "4096", "--xla-defaults", "--out", str(out)]) == 2
    assert "--unpinned or fewer nodes" in capsys.readouterr().err
    assert not out.exists()


def test_the_train_step_benchmark_times_an_experiments_step(capsys):
    import jax

    from benchmarks import train_step

    with jax.numpy_dtype_promotion("standard"):  # optax's AdamW mixes Python floats in
        seconds = train_step.main(["experiments.resnet50", "resnet18", "--quick",
                                   "--repeats", "2"])
    assert seconds > 0
    assert "experiments.resnet50 resnet18, float32: batch 16, step" in capsys.readouterr().out


def test_single_refuses_an_unknown_engine(capsys):
    with pytest.raises(SystemExit):
        single.parse_args(["--engines", "disco_jax,torch", "--out", "x.json"])
    assert "unknown engines ['torch']" in capsys.readouterr().err


def test_a_trained_models_budgets_give_the_benchmarks_disco_its_exchanges(tmp_path, capsys):
    """--budgets: each layer sends the report's k (in random directions), a layer
    with k = 0 exchanges nothing; budgets of another network are refused by name."""
    import helpers

    import disco_jax as dj
    from benchmarks.latency import plan_budgets, set_budgets
    from disco_jax.errors import ConfigError

    model = helpers.TinyNet(nodes=2, k=4, width=16)
    sending = {name: layer for name, layer in dj.layers.disco_layers(model).items()
               if layer.spec.split_input}
    wanted = {name: (index % 3) * (layer.spec.group_in // 4)
              for index, (name, layer) in enumerate(sorted(sending.items()))}
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"nodes": 2, "layers": [
        {"name": name, "k": wanted[name], "input_shape": [7, 7, layer.spec.c_in]}
        for name, layer in sending.items()]}))
    assert plan_budgets(report, model) == wanted
    set_budgets(model, wanted)
    plan = dj.compile_plan(model)
    assert {name: plan[name].k for name in wanted} == wanted
    assert all(plan[name].send_proj is not None for name in wanted)
    assert 0 in wanted.values()
    entries = json.loads(report.read_text())
    first = entries["layers"][0]["name"]
    report.write_text(json.dumps({**entries, "layers": entries["layers"][1:]}))
    with pytest.raises(ConfigError, match=f"it has no layer {first}; it is of another network"):
        plan_budgets(report, model)
    report.write_text(json.dumps({**entries, "nodes": 4}))
    with pytest.raises(ConfigError, match="over 4 nodes there, .* over 2 here: pass the budgets"):
        plan_budgets(report, model)
    report.write_text("{}")
    with pytest.raises(ConfigError, match="not a run's report with its layers' k"):
        plan_budgets(report, model)
    with pytest.raises(SystemExit):
        network.parse_args(["--budgets", str(tmp_path / "nope.json")])
    assert "nope.json: no such report or plan folder" in capsys.readouterr().err
