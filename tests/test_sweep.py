"""The Pareto sweep's bookkeeping (experiments.sweep): which points a run
already has, what makes a point verified, the tables and the multi-seed
summary. The sweep trained end to end: tests/test_resnet50.py."""

import pytest

from experiments import sweep


def test_the_runs_own_variants_are_points_and_nothing_else_is():
    uniform = sweep.RunPoints(comm_ratio=0.2, payload="int8", allocation="uniform")
    assert uniform.variant_of("learned", "int8", 0.2) == "learned"
    assert uniform.variant_of("random", "int8", 0.2) == "random"
    assert uniform.variant_of("allocated", "int8", 0.2) is None  # the run did not allocate
    assert uniform.variant_of("learned", "float32", 0.2) is None  # another payload
    assert uniform.variant_of("learned", "int8", 0.1) is None  # another budget
    for series in sweep.SERIES:  # nothing travels: series and payload do not matter
        assert uniform.variant_of(series, "bfloat16", 0.0) == "no_comm"
    assert uniform.variant_of("random", "float32", 1.0) == "dense_split"
    assert uniform.variant_of("random", "int8", 1.0) is None  # every channel, in int8
    assert uniform.variant_of("allocated", "float32", 1.0) is None  # its own refit
    allocated = sweep.RunPoints(comm_ratio=0.1, payload="float32", allocation="learned")
    assert allocated.variant_of("allocated", "float32", 0.1) == "learned"
    assert allocated.variant_of("learned", "float32", 0.1) == "uniform_allocation"
    names = [point[0] for point in allocated.points([0.05, 0.1], ["allocated"],
                                                    ["float32", "int8"])]
    assert names == ["allocated-float32-r0.05", "allocated-float32-r0.1",
                     "allocated-int8-r0.05", "allocated-int8-r0.1"]


@pytest.mark.parametrize("text, message", [
    ("learned,nope", "--sweep-series must be among allocated, learned, random, got nope"),
    ("learned,learned", "--sweep-series names one twice: learned,learned"),
])
def test_a_bad_list_is_named(text, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_list(text, tuple(sweep.SERIES), "--sweep-series")


def _check(**changes):
    return {"hlo_bytes_per_sample": 100.0, "max_abs_diff": 1e-2, "max_abs_reference": 20.0,
            "prediction_mismatches": 1, "mismatches_that_are_ties": 1,
            "other_collectives": []} | changes


@pytest.mark.parametrize("changes, budget_exact, verified", [
    ({}, True, True),
    ({"hlo_bytes_per_sample": 104.0}, True, False),  # the program sends more than the plan
    ({"prediction_mismatches": 2}, True, False),  # a prediction that is not a float tie
    ({"max_abs_diff": 0.5}, True, False),  # more than one int8 step of 20
    ({"other_collectives": ["all-gather"]}, True, False),
    ({}, False, False),  # the plan is off its budget
])
def test_a_point_is_verified_as_the_runs_disco_is(changes, budget_exact, verified, tmp_path):
    point = sweep.record("learned-int8-r0.1", "learned", "int8", 0.1, None, "top1", 0.85,
                         _check(**changes), {"plan": 100, "budget": 100, "exact": budget_exact},
                         1000, tmp_path)
    assert point["verified"] is verified
    assert point["comm_reduction"] == 10.0 and point["variant"] == "sweep"
    assert point["label"] == "DISCO, uniform ratio"


def test_float32_points_are_held_to_float32s_tolerance(tmp_path):
    point = sweep.record("learned-float32-r0.1", "learned", "float32", 0.1, "learned", "top1",
                         0.85, _check(), {"plan": 100, "budget": 100, "exact": True}, 1000,
                         tmp_path)
    assert not point["verified"]  # 1e-2 is more than float32's 1e-4 of 20


def _point(name, series, payload, ratio, top1, sent):
    return {"name": name, "series": series, "label": sweep.SERIES[series].label,
            "payload_dtype": payload, "comm_ratio": ratio, "top1": top1,
            "bytes_per_image": sent, "comm_reduction": 1000 / sent if sent else None,
            "verified": True}


def test_the_table_lists_every_point_by_series_and_bytes():
    points = [_point("learned-int8-r0.2", "learned", "int8", 0.2, 0.88, 40),
              _point("learned-int8-r0.1", "learned", "int8", 0.1, 0.87, 20),
              _point("learned-float32-r0", "learned", "float32", 0.0, 0.80, 0)]
    rows = sweep.format_sweep(points, "top1", 100.0, "top-1", 0.89)
    body = rows[2:]
    assert [row.split()[3] for row in body] == ["float32", "int8", "int8"]
    assert "20" in body[1] and "50.00x" in body[1] and "-2.00" in body[1]
    assert body[0].split()[-4] == "-"  # nothing sent: no reduction


def test_seeds_summarise_each_point_that_every_seed_has():
    runs = [{"sweep": [_point("learned-int8-r0.1", "learned", "int8", 0.1, 0.87, 20),
                       _point("random-int8-r0.1", "random", "int8", 0.1, 0.85, 20)]},
            {"sweep": [_point("learned-int8-r0.1", "learned", "int8", 0.1, 0.89, 20)]}]
    summary = sweep.over_seeds(runs, "top1")
    assert [point["name"] for point in summary] == ["learned-int8-r0.1"]
    assert summary[0]["top1"]["mean"] == pytest.approx(0.88)
    assert summary[0]["top1"]["values"] == [0.87, 0.89] and summary[0]["verified"]
    rows = sweep.format_sweep_over_seeds(summary, "top1", 100.0)
    assert "88.00" in rows[1] and "(87.00, 89.00)" in rows[1]


def test_a_point_the_run_does_not_have_is_named_with_the_ones_it_has(tmp_path):
    from disco_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"has no sweep point 'x'; it has none \(run it with "
                                          r"--sweep\)"):
        sweep.load_point(tmp_path, "x")
    (tmp_path / "sweep" / "learned-int8-r0.1").mkdir(parents=True)
    (tmp_path / "sweep" / "learned-int8-r0.1" / "point.json").write_text("{}")
    with pytest.raises(ConfigError, match="it has learned-int8-r0.1"):
        sweep.load_point(tmp_path, "x")


def test_a_lossy_point_is_paired_with_float32_at_the_same_channels_only():
    points = [_point("learned-int8-r0.1", "learned", "int8", 0.1, 0.87, 20),
              _point("learned-float32-r0.1", "learned", "float32", 0.1, 0.88, 70),
              _point("random-bfloat16-r0.1", "random", "bfloat16", 0.1, 0.85, 35),
              _point("random-float32-r0.1", "random", "float32", 0.1, 0.86, 70),
              _point("learned-int8-r0.2", "learned", "int8", 0.2, 0.88, 40),  # no float32 r0.2
              _point("allocated-int8-r0.1", "allocated", "int8", 0.1, 0.88, 20),
              _point("allocated-float32-r0.1", "allocated", "float32", 0.1, 0.88, 70)]
    pairs = [(a["name"], b["name"]) for a, b in sweep.payload_twins(points)]
    # the allocated series shares out a payload's budget: its k differ between payloads
    assert pairs == [("learned-int8-r0.1", "learned-float32-r0.1"),
                     ("random-bfloat16-r0.1", "random-float32-r0.1")]


def test_a_run_judges_int8_against_float32_at_the_same_channels():
    from experiments.pipeline import Targets, targets

    report = {"comm_bytes_per_sample": {"dense_split": 1000, "disco_hlo": 20},
              "flops_per_node": {}, "params_per_node": {},
              "quality": {"metric": "top1", "random_mask": None},
              "sweep": [_point("learned-int8-r0.1", "learned", "int8", 0.1, 0.876, 20),
                        _point("learned-float32-r0.1", "learned", "float32", 0.1, 0.88, 70),
                        _point("random-int8-r0.1", "random", "int8", 0.1, 0.84, 20),
                        _point("random-float32-r0.1", "random", "float32", 0.1, 0.85, 70)]}
    rows = {what: (measured, met) for what, measured, met in
            targets(report, Targets(comm_reduction=5.0, gap=1.0, payload_gap=0.3))}
    assert rows["int8 within 0.3 point of float32 at the same channels (learned, rho 0.1)"] \
        == ("-0.40 points", False)
    assert rows["int8 within 0.3 point of float32 at the same channels (random, rho 0.1)"][1] \
        is False
    assert not any("float32" in what for what, _, _ in
                   targets(report, Targets(comm_reduction=5.0, gap=1.0)))  # not its target
