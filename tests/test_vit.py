"""`python -m experiments.vit` end to end on its --quick settings, and
`python -m experiments.rankings` on that run."""

import json

import pytest

from disco_jax.data import FASHION_MNIST_DIR
from experiments import rankings, vit

pytestmark = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A --quick run on 2 nodes: its folder and its report."""
    folder = tmp_path_factory.mktemp("vit")
    code = vit.main(["--quick", "--mesh", "2", "--out", str(folder / "run"),
                     "--report", str(folder / "report.json")])
    assert code == 0
    return folder / "run", json.loads((folder / "report.json").read_text())


@pytest.mark.slow
def test_quick_run_passes_its_checks_and_counts_the_layer_norms(quick_run):
    run, report = quick_run
    assert vit.verified(report)
    assert report["model"] == "vit" and report["heads"] == 4 and report["pool"] == "mean"
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    norms = [part for part in report["other_parts"] if "norm" in part["name"]]
    assert len(norms) == 3  # two per block (depth 1) and the final one
    tokens = 7 * 7
    assert norms[0]["disco"]["comm_bytes"] == 2 * 1 * 2 * tokens * 4  # N(N-1) x 2 per token
    assert report["distributed"]["other_collectives"] == []
    assert report["distributed"]["prediction_mismatches"] == 0
    assert (run / "plan" / "plan.json").is_file()


@pytest.mark.slow
def test_rankings_retrain_the_runs_variants_and_pair_them_by_seed(quick_run, tmp_path, capsys):
    run, report = quick_run
    path = tmp_path / "rankings.json"
    assert rankings.main(["--run", str(run), "--seeds", "0,1", "--importances",
                          "fisher,saliency", "--report", str(path)]) == 0
    result = json.loads(path.read_text())
    trained = result["trained"]
    # seed 0 is the run's seed and fisher its ranking: the run's own variants again
    assert report["recipe"]["importance"] == "fisher"
    assert trained["fisher"]["test"]["values"][0] == report["quality"]["disco"]
    assert trained["random"]["test"]["values"][0] == report["quality"]["random_mask"]
    assert trained["fisher"]["at_budget"]["values"][0] == report["quality_at_budget"]["disco"]
    for name in ("fisher", "saliency"):
        pairs = result["learned_minus_random"][name]["test"]["values"]
        assert pairs == pytest.approx([a - b for a, b in zip(
            trained[name]["test"]["values"], trained["random"]["test"]["values"], strict=True)])
    assert set(result["one_shot"]) == {"dense", "weight_norm", "saliency", "fisher", "random"}
    assert len(result["one_shot"]["random"]["values"]) == 2
    assert "fisher - random" in capsys.readouterr().out
    assert result["basis"] == "principal"  # the run's

    # the same in the network's own channels: the random variants do not change
    assert rankings.main(["--run", str(run), "--seeds", "0", "--basis", "channels",
                          "--report", str(path)]) == 0
    own = json.loads(path.read_text())
    assert own["basis"] == "channels"
    assert own["trained"]["random"]["test"]["values"] == trained["random"]["test"]["values"][:1]


@pytest.mark.slow
def test_variants_set_at_once_and_refitted_are_saved_where_infer_loads_them(quick_run):
    import numpy as np

    import disco_jax as dj
    from disco_jax.train import restore_model
    from experiments import infer, pipeline

    run, report = quick_run
    assert report["recipe"]["refit"] == "lstsq" and report["recipe"]["basis"] == "principal"
    assert report["steps_per_variant"]["prune"] == report["steps_per_variant"]["finetune"] == 0
    _, _, dense = pipeline.open_run(run, "dense", "a dense checkpoint", "experiments.vit")
    restore_model(dense, run / "dense")
    dense_layers = dj.layers.disco_layers(dense)
    # the random variant keeps the network's own channels: the refit changed the
    # weights of the channels a node reads, and only those
    model, _, _, _, _ = infer.load_run(run, "random")  # random/finetune: saved at step 3
    refitted = 0
    for name, layer in dj.layers.disco_layers(model).items():
        if not layer.spec.split_input:
            continue
        spec, mask = layer.spec, np.asarray(layer.mask[...])
        kernel = np.asarray(layer.kernel[...])
        before = np.asarray(dense_layers[name].kernel[...])
        read = (mask > 0) | np.eye(spec.nodes, dtype=bool)[:, :, None]  # [N_dst, N_src, C/N]
        for i in range(spec.nodes):
            rows = read[i].reshape(-1)  # receiver i's input rows, sender-major
            cols = slice(i * spec.group_out, (i + 1) * spec.group_out)
            np.testing.assert_array_equal(kernel[~rows, cols], before[~rows, cols])
            refitted += not np.array_equal(kernel[rows, cols], before[rows, cols])
    assert refitted > 0
    # the learned variant, in the principal basis, with the plan the run saved
    model, plan, _, _, _ = infer.load_run(run, "learned")
    for name, layer in dj.layers.disco_layers(model).items():
        if layer.spec.split_input:
            assert plan[name].k == int(np.asarray(layer.mask[...])[0, 1].sum())


def test_rankings_refuse_a_folder_without_a_run_and_unknown_rankings(tmp_path, capsys):
    assert rankings.main(["--run", str(tmp_path)]) == 2
    assert "holds no run with a dense checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        rankings.main(["--run", str(tmp_path), "--importances", "magic"])
    assert exit_.value.code == 2
    assert "--importances must be among" in capsys.readouterr().err


def test_heads_that_do_not_divide_over_the_nodes_are_refused(tmp_path, capsys):
    code = vit.main(["--quick", "--mesh", "4", "--heads", "2", "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "2 heads do not divide over 4 nodes" in err
    assert not (tmp_path / "run").exists()
