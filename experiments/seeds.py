"""The seed protocol: one run per seed, then mean ± std and paired differences.

``--seeds 0,1,2,3,4`` on any pipeline experiment runs the whole job once per
seed (each seed trains its own dense model, with its own initialisation and
data order, then its own calibration images and random channels) and
:func:`over_seeds` summarises the runs:

- each variant's top-1: mean ± sample std over seeds;
- paired differences, seed by seed, in points: DISCO - random masks (and
  random directions where the run has them), DISCO - no communication,
  DISCO - dense split, and each sweep point sent in a lossy payload - its
  float32 twin at the same channels (:func:`experiments.sweep.payload_twins`);
- the targets, judged on the paired differences: a target is met only when
  the paired mean is more than two standard errors (std / sqrt(seeds)) past
  its threshold, and "within G points of the dense split" also in every seed.
  One seed is not evidence: with one seed no quality target is met.

Runs made apart (say, two processes pinned to one core each) are summarised
afterwards from the ``report.json`` each run writes into its folder:

    python -m experiments.seeds runs/resnet50-n2/seed-0 runs/resnet50-n2/seed-1 \
        [--report reports/seeds.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from experiments import sweep
from experiments.compare import stats, write_report
from experiments.pipeline import amount, payload_claim

PAIRED = (("random_mask", "random masks"), ("random_directions", "random directions"),
          ("no_comm", "no communication"), ("dense_split", "dense split"),
          ("disco_uniform_allocation", "DISCO at the uniform ratio"))
"""What DISCO is compared with, seed by seed (report key, name)."""


def _standard_error(summary: dict) -> float | None:
    count = len(summary["values"])
    return None if summary["std"] is None else summary["std"] / math.sqrt(count)


def over_seeds(runs: list[dict], goals) -> dict:
    """The multi-seed report: the first run's description and costs (the same
    in every seed), ``quality`` as mean ± std, ``paired`` differences in
    points, ``targets`` judged on them, and every run under ``per_seed``.

    Arguments:
      runs: one report per seed (:func:`experiments.pipeline.run`).
      goals: the experiment's :class:`~experiments.pipeline.Targets`.
    """
    first = runs[0]
    scale = first.get("metric_scale", 100.0)
    keys = [key for key, value in first["quality"].items()
            if key != "metric" and value is not None]
    quality = {"metric": first["quality"]["metric"]}
    quality.update({key: stats([r["quality"][key] for r in runs]) for key in keys})
    paired = {}
    for key, _ in PAIRED:
        if key in keys and "disco" in keys:
            paired[f"disco - {key}"] = stats(
                [scale * (r["quality"]["disco"] - r["quality"][key]) for r in runs])
    by_name = sweep.points_by_name(runs)
    for point, twin in sweep.payload_twins(first.get("sweep", [])):
        pair = [(seed.get(point["name"]), seed.get(twin["name"])) for seed in by_name]
        if all(a is not None and b is not None for a, b in pair):
            paired[f"{point['name']} - {twin['name']}"] = stats(
                [scale * (a[quality["metric"]] - b[quality["metric"]]) for a, b in pair])
    report = {key: first[key] for key in ("model", "task", "metric_label", "metric_scale",
                                          "metric_unit", "dataset", "input_shape", "nodes",
                                          "comm_ratio", "payload_dtype", "preset", "recipe",
                                          "comm_bytes_per_sample", "comm_reduction",
                                          "flops_per_node", "params_per_node") if key in first}
    report |= {"steps_per_variant": steps_of(first),
               "seeds": [r["seed"] for r in runs], "quality": quality, "paired": paired,
               "max_abs_diff_vs_reference": max(r["max_abs_diff_vs_reference"] for r in runs),
               "verified": all(r["verified"] for r in runs), "per_seed": runs,
               "sweep": sweep.over_seeds(runs, quality["metric"])}
    report["targets"] = seed_targets(report, goals)
    return report


def seed_targets(report: dict, goals) -> list[dict]:
    """The quality targets over seeds: ``{"what", "measured", "met"}`` each."""
    rows = []
    runs = report["per_seed"]
    unit = report.get("metric_unit", "points")
    hlo = [r["comm_bytes_per_sample"]["dense_split"] / r["comm_bytes_per_sample"]["disco_hlo"]
           for r in runs if r["comm_bytes_per_sample"]["disco_hlo"]]
    if hlo:
        rows.append({"what": f"communication >= {goals.comm_reduction:g}x below the dense "
                             "split (compiled HLO), every seed",
                     "measured": f"{min(hlo):.2f}x", "met": min(hlo) >= goals.comm_reduction})
    gap = report["paired"].get("disco - dense_split")
    if gap is not None:
        error = _standard_error(gap)
        worst = min(gap["values"])
        met = (error is not None and worst >= -goals.gap
               and gap["mean"] - 2 * error > -goals.gap)
        rows.append({"what": f"DISCO within {amount(goals.gap, unit)} of the dense split, "
                             "every seed and mean - 2 SE",
                     "measured": f"{gap['mean']:+.2f} ± {error or 0:.2f} SE, worst {worst:+.2f}",
                     "met": met})
    for point, twin in sweep.payload_twins(report.get("sweep") or []):
        cost = report["paired"].get(f"{point['name']} - {twin['name']}")
        if goals.payload_gap is None or cost is None:
            continue
        error = _standard_error(cost)
        worst = min(cost["values"])
        rows.append({"what": payload_claim(point, goals.payload_gap, unit)
                             + ", every seed and mean - 2 SE",
                     "measured": f"{cost['mean']:+.2f} ± {error or 0:.2f} SE, worst {worst:+.2f}",
                     "met": (error is not None and worst >= -goals.payload_gap
                             and cost["mean"] - 2 * error > -goals.payload_gap)})
    for key, name in (*PAIRED[:2], PAIRED[4]):  # the comparisons at the same bytes
        lead = report["paired"].get(f"disco - {key}")
        if lead is None:
            continue
        error = _standard_error(lead)
        rows.append({"what": f"DISCO above {name} at the same bytes by > 2 SE",
                     "measured": f"{lead['mean']:+.2f} ± {error or 0:.2f} SE",
                     "met": error is not None and lead["mean"] - 2 * error > 0})
    return rows


def format_seeds(report: dict) -> str:
    """The terminal table of a multi-seed report."""
    quality, runs = report["quality"], report["per_seed"]
    columns = [(key, name) for key, name in (("dense_split", "dense split"), ("disco", "DISCO"),
                                             *PAIRED[:3]) if key in quality]
    columns = list(dict.fromkeys(columns))
    width = max(len(name) for _, name in columns) + 2
    header = f"  {'seed':>6}" + "".join(f"{name:>{width}}" for _, name in columns)
    label = runs[0].get("metric_label", "top-1")
    scale, unit = runs[0].get("metric_scale", 100.0), runs[0].get("metric_unit", "points")
    rows = [f"over seeds {', '.join(map(str, report['seeds']))}: {label} "
            f"{'%' if scale == 100 else unit} on {runs[0]['test_images']} test images", header]
    for run in runs:
        rows.append(f"  {run['seed']:>6}" + "".join(
            f"{scale * run['quality'][key]:>{width}.2f}" for key, _ in columns))
    rows.append(f"  {'mean':>6}" + "".join(
        f"{scale * quality[key]['mean']:>{width}.2f}" for key, _ in columns))
    rows.append(f"  {'std':>6}" + "".join(
        f"{scale * (quality[key]['std'] or 0):>{width}.2f}" for key, _ in columns))
    rows.append(f"paired differences, {unit} (mean ± std; per seed):")
    for name, summary in report["paired"].items():
        rows.append(f"  {name:28} {summary['mean']:+6.2f} ± {summary['std'] or 0:.2f}   ("
                    + ", ".join(f"{v:+.2f}" for v in summary["values"]) + ")")
    rows.append("targets over seeds (met only when the paired mean is more than two standard "
                "errors past the threshold):")
    width = max([62] + [len(row["what"]) for row in report["targets"]])
    for row in report["targets"]:
        verdict = "met" if row["met"] else "NOT met"
        rows.append(f"  {row['what']:{width}} {row['measured']:>30}   {verdict}")
    if report.get("sweep"):
        rows.append(f"sweep over seeds ({label}, same steps per point):")
        rows += sweep.format_sweep_over_seeds(report["sweep"], report["quality"]["metric"],
                                              scale)
    rows.append(f"every seed: distributed == reference, HLO bytes == plan bytes, budgets exact: "
                f"{'yes' if report['verified'] else 'NO'}")
    return "\n".join(rows)


def steps_of(report: dict) -> dict:
    """A run's ``steps_per_variant`` with the dense model's steps counted the
    same whether the run trained it or loaded it (``--init``, at
    ``init_step``): each seed has its own dense checkpoint, and where it came
    from is in that seed's own report."""
    steps = dict(report["steps_per_variant"])
    init_step = steps.pop("init_step", None)
    steps.pop("init", None)
    if steps.get("dense") is None and init_step is not None:  # it counted only its own steps
        steps["dense"] = init_step
        steps["total"] = init_step + steps["prune"] + steps["finetune"]
        steps["images"] = steps["total"] * steps["batch_size"]
    return steps


def _setting(report: dict) -> dict:
    """What must be equal for two runs to be seeds of one setting."""
    return {"model": report["model"], "nodes": report["nodes"],
            "comm_ratio": report["comm_ratio"], "recipe": json.dumps(report["recipe"]),
            "steps": json.dumps(steps_of(report), sort_keys=True)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.seeds",
                                     description="Summarise runs of one experiment made with "
                                                 "different seeds.")
    parser.add_argument("runs", type=Path, nargs="+",
                        help="run folders (each holds the report.json its run wrote)")
    parser.add_argument("--report", type=Path, help="write the summary as JSON here")
    args = parser.parse_args(argv)
    from disco_jax.errors import ConfigError
    from experiments.pipeline import network_of

    try:
        runs = []
        for folder in args.runs:
            record = folder / "report.json"
            if not record.is_file():
                raise ConfigError(f"{folder} holds no finished run ({record} is missing); "
                                  "give the --out folder of a finished run")
            runs.append(json.loads(record.read_text()))
        settings = [_setting(r) for r in runs]
        for run, setting in zip(args.runs[1:], settings[1:], strict=True):
            changed = sorted(k for k in setting if setting[k] != settings[0][k])
            if changed:
                raise ConfigError(
                    f"these runs differ in more than their seed: {run} and {args.runs[0]} "
                    + "; ".join(f"{k}: {setting[k]} against {settings[0][k]}" for k in changed)
                    + "; summarise runs of one setting")
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"two of these runs have the same seed: {seeds}")
        model = runs[0]["model"]
        report = over_seeds(runs, network_of(model).targets_of(model))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_seeds(report))
    if args.report:
        write_report(args.report, report)
        print(f"report written to {args.report}")
    return 0 if report["verified"] else 1


if __name__ == "__main__":
    sys.exit(main())
