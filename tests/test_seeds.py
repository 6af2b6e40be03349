"""The seed protocol's summary (experiments.seeds): paired differences and targets."""

import json

import pytest

from experiments import seeds
from experiments.pipeline import Targets

GOALS = Targets(comm_reduction=5.0, gap=1.0)


def run(seed, dense, disco, random, no_comm=0.5):
    return {"seed": seed, "model": "resnet50", "nodes": 2, "comm_ratio": 0.2,
            "recipe": {}, "steps_per_variant": {}, "test_images": 100, "verified": True,
            "max_abs_diff_vs_reference": 1e-6,
            "comm_bytes_per_sample": {"dense_split": 500, "disco": 100, "disco_hlo": 100},
            "quality": {"metric": "top1", "single": dense, "dense_split": dense,
                        "disco": disco, "random_mask": random, "no_comm": no_comm}}


def target(report, start):
    return next(row for row in report["targets"] if row["what"].startswith(start))


def test_paired_differences_are_taken_seed_by_seed_in_points():
    report = seeds.over_seeds([run(0, 0.90, 0.89, 0.88), run(1, 0.80, 0.795, 0.78)], GOALS)
    assert report["paired"]["disco - random_mask"]["values"] == pytest.approx([1.0, 1.5])
    assert report["paired"]["disco - dense_split"]["values"] == pytest.approx([-1.0, -0.5])
    assert report["quality"]["disco"]["mean"] == pytest.approx(0.8425)


def test_a_lead_counts_only_beyond_two_standard_errors():
    steady = [run(s, 0.9, 0.89, 0.885 - 0.001 * s) for s in range(5)]  # +0.5..+0.9 points
    noisy = [run(s, 0.9, 0.89, 0.89 + (0.01 if s % 2 else -0.011)) for s in range(5)]
    assert target(seeds.over_seeds(steady, GOALS), "DISCO above random masks")["met"]
    assert not target(seeds.over_seeds(noisy, GOALS), "DISCO above random masks")["met"]


def test_one_seed_is_not_evidence():
    report = seeds.over_seeds([run(0, 0.9, 0.899, 0.5)], GOALS)
    assert not target(report, "DISCO above random masks")["met"]
    assert not target(report, "DISCO within")["met"]


def test_the_gap_must_hold_in_every_seed():
    close = [run(s, 0.9, 0.898, 0.8) for s in range(4)]
    one_far = close[:3] + [run(3, 0.9, 0.885, 0.8)]  # 1.5 points below in one seed
    assert target(seeds.over_seeds(close, GOALS), "DISCO within")["met"]
    assert not target(seeds.over_seeds(one_far, GOALS), "DISCO within")["met"]


def test_the_summary_prints_every_seed_and_verdict():
    report = seeds.over_seeds([run(0, 0.9, 0.89, 0.8), run(1, 0.9, 0.88, 0.8)], GOALS)
    lines = seeds.format_seeds(report).splitlines()
    assert lines[0].startswith("over seeds 0, 1")
    assert any(line.split()[:3] == ["1", "90.00", "88.00"] for line in lines)
    assert any("disco - random_mask" in line and "+8.50 ± 0.71   (+9.00, +8.00)" in line
               for line in lines)
    within = next(line for line in lines if "DISCO within 1.0 point" in line)
    assert within.endswith("NOT met")  # -1.00 and -2.00 points
    lead = next(line for line in lines if "DISCO above random masks" in line)
    assert lead.endswith("met") and not lead.endswith("NOT met")


def test_summarising_folders_without_runs_or_of_other_settings_is_refused(tmp_path, capsys):
    assert seeds.main([str(tmp_path)]) == 2
    assert "holds no finished run" in capsys.readouterr().err
    for seed, ratio in ((0, 0.2), (1, 0.5)):
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        record = run(seed, 0.9, 0.89, 0.8) | {"comm_ratio": ratio}
        (folder / "report.json").write_text(json.dumps(record))
    assert seeds.main([str(tmp_path / "seed-0"), str(tmp_path / "seed-1")]) == 2
    assert "differ in more than their seed" in capsys.readouterr().err


def test_a_dense_model_loaded_at_step_p_counts_as_one_trained_for_p_steps(tmp_path, capsys):
    """Seeds whose dense model was trained in the run and seeds that loaded one
    (--init) at the same step are one setting; another step count is not."""
    trained = {"dense": 210, "init": None, "init_step": None, "prune": 0, "finetune": 60,
               "batch_size": 64, "total": 270, "images": 17280}
    loaded = trained | {"dense": None, "init": "runs/dense", "init_step": 210, "total": 60,
                        "images": 3840}
    folders = []
    for seed, steps in enumerate((trained, loaded, loaded | {"init_step": 150})):
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps(
            run(seed, 0.9, 0.89, 0.88) | {"steps_per_variant": steps}))
        folders.append(str(folder))
    assert seeds.main([*folders[:2], "--report", str(tmp_path / "summary.json")]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps_per_variant"] == {"dense": 210, "prune": 0, "finetune": 60,
                                            "batch_size": 64, "total": 270, "images": 17280}
    assert seeds.main(folders) == 2
    err = capsys.readouterr().err
    assert "differ in more than their seed" in err and '"dense": 150' in err


def test_int8_is_paired_with_float32_seed_by_seed_and_judged_on_every_seed():
    def point(name, payload, top1):
        return {"name": name, "series": "learned", "label": "DISCO, uniform ratio",
                "payload_dtype": payload, "comm_ratio": 0.1, "top1": top1,
                "bytes_per_image": 20 if payload == "int8" else 70, "verified": True}

    goals = Targets(comm_reduction=5.0, gap=1.0, payload_gap=0.3)
    runs = []
    for seed, (int8, float32) in enumerate([(0.880, 0.881), (0.871, 0.870), (0.885, 0.887)]):
        runs.append(run(seed, 0.9, 0.89, 0.88) | {"sweep": [
            point("learned-int8-r0.1", "int8", int8),
            point("learned-float32-r0.1", "float32", float32)]})
    report = seeds.over_seeds(runs, goals)
    cost = report["paired"]["learned-int8-r0.1 - learned-float32-r0.1"]
    assert cost["values"] == pytest.approx([-0.1, 0.1, -0.2])
    assert target(report, "int8 within 0.3 point of float32")["met"]
    runs[2]["sweep"][0]["top1"] = 0.883  # 0.4 points below float32 in one seed
    assert not target(seeds.over_seeds(runs, goals), "int8 within 0.3 point")["met"]
