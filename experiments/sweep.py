"""The Pareto sweep: the task's metric against bytes per image, the curve a
deployment point is chosen from.

    python -m experiments.resnet50 --mesh 2 --sweep 0.05,0.1,0.2 \\
        --sweep-series allocated,learned,random --sweep-payloads float32,bfloat16,int8

A point is one ``(series, payload, ratio)``, trained from the run's dense
checkpoint with the same steps as the run's variants:

- the ratio sets the byte budget: what the uniform ratio rho sends in that
  payload (k = rho * C_in/N channels per node pair and layer);
- the series (:data:`SERIES`) says how the budget is spent: ``learned``
  (learned masks, or directions, at the uniform ratio), ``allocated`` (the
  same bytes shared out across layers by what each byte buys,
  :func:`disco_jax.budget.allocate`; needs the directions method) or
  ``random`` (random masks at the uniform ratio);
- the payload (:data:`disco_jax.payload.PAYLOADS`) is what the channels
  travel as.

The run's own variants are points where they match (ratio 0: no
communication; ratio 1 in float32: the dense split; the run's ratio and
payload: DISCO, random masks, DISCO at the uniform ratio) and are not trained
again. Every point is checked as the run's DISCO is: its plan on the mesh
against its single-device reference (the same quantisation in both), HLO
bytes == plan bytes, the plan on its budget. Each point keeps its plan, its
checkpoint and a ``point.json`` under ``OUT/sweep/NAME``: ``python -m
experiments.export --run OUT --point NAME`` makes the node bundles of the
chosen point.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Series:
    """One curve of the sweep: the variant trained (:mod:`experiments.compare`)
    and how its bytes are shared among layers."""

    variant: str
    allocation: str
    label: str


SERIES = {
    "allocated": Series("learned", "learned", "DISCO, learned allocation"),
    "learned": Series("learned", "uniform", "DISCO, uniform ratio"),
    "random": Series("random", "uniform", "random masks, uniform ratio"),
}
"""``--sweep-series``: the curves a sweep can draw, by name."""

DEFAULT_SERIES = ("learned",)
"""The series of a ``--sweep`` without ``--sweep-series``."""


def parse_list(text: str | None, allowed, what: str) -> tuple[str, ...]:
    """``"a,b"`` as ``("a", "b")``, each one of ``allowed``.

    Raises:
      ValueError: a name not in ``allowed`` or named twice (the message names
        it and the choices).
    """
    names = tuple(name.strip() for name in (text or "").split(",") if name.strip())
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"{what} must be among {', '.join(allowed)}, got {', '.join(unknown)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names one twice: {text}")
    return names


def point_name(series: str, payload: str, ratio: float) -> str:
    """The folder name of a point under ``OUT/sweep``: ``learned-int8-r0.1``."""
    return f"{series}-{payload}-r{ratio:g}"


@dataclasses.dataclass(frozen=True)
class RunPoints:
    """What a run's own variants are on the curve (:meth:`variant_of`)."""

    comm_ratio: float
    payload: str
    allocation: str

    def variant_of(self, series: str, payload: str, ratio: float) -> str | None:
        """The run's variant that is point ``(series, payload, ratio)``, or None."""
        if ratio == 0.0:
            return "no_comm"  # nothing travels: the series and the payload do not matter
        if ratio == 1.0 and payload == "float32" and series != "allocated":
            return "dense_split"
        if ratio != self.comm_ratio or payload != self.payload:
            return None
        if series == "random":
            return "random"
        if series == "learned":
            return "uniform_allocation" if self.allocation == "learned" else "learned"
        return "learned" if self.allocation == "learned" else None

    def points(self, ratios, series, payloads):
        """Every ``(name, series, payload, ratio, run variant or None)``, in order."""
        return [(point_name(s, p, r), s, p, r, self.variant_of(s, p, r))
                for s in series for p in payloads for r in ratios]


def payload_twins(sweep: list[dict]) -> list[tuple[dict, dict]]:
    """``(point, twin)`` for each point of ``sweep`` sent in a lossy payload
    whose float32 twin (the same series at the same ratio: the same k per
    layer, so the same channels or directions; only what they travel as
    differs) the sweep has. The allocated series is left out: its budget,
    and so each layer's k, depends on the payload."""
    by_key = {(p["series"], p["comm_ratio"], p["payload_dtype"]): p for p in sweep}
    return [(point, by_key[(point["series"], point["comm_ratio"], "float32")])
            for point in sweep
            if point["payload_dtype"] != "float32" and point["comm_ratio"] > 0
            and SERIES[point["series"]].allocation == "uniform"
            and (point["series"], point["comm_ratio"], "float32") in by_key]


def checked(check: dict, payload: str) -> bool:
    """A mesh check (:func:`experiments.pipeline.distributed_check` with the
    reference) passes: the same predictions up to float ties, outputs within
    :func:`disco_jax.payload.reference_tolerance` of the payload, no
    collective but the plan's."""
    from disco_jax.payload import reference_tolerance

    return (check["prediction_mismatches"] == check["mismatches_that_are_ties"]
            and check["max_abs_diff"] <= reference_tolerance(payload) * max(
                check["max_abs_reference"], 1.0)
            and not check["other_collectives"])


def record(name: str, series: str, payload: str, ratio: float, variant: str | None,
           metric: str, score: float, check: dict, budget: dict, dense_split_bytes: int,
           folder: Path) -> dict:
    """One point of the report's ``sweep``: its metric, its bytes (plan and
    compiled HLO), the reduction against the dense split, its check."""
    sent = budget["plan"]
    return {
        "name": name, "series": series, "label": SERIES[series].label,
        "payload_dtype": payload, "comm_ratio": ratio, "variant": variant or "sweep",
        metric: score, "bytes_per_image": sent,
        "hlo_bytes_per_image": check["hlo_bytes_per_sample"],
        "comm_reduction": dense_split_bytes / sent if sent else None,
        "budget": budget, "max_abs_diff": check["max_abs_diff"],
        "max_abs_reference": check["max_abs_reference"],
        "prediction_mismatches": check["prediction_mismatches"],
        "mismatches_that_are_ties": check["mismatches_that_are_ties"],
        "verified": (checked(check, payload) and check["hlo_bytes_per_sample"] == sent
                     and budget["exact"]),
        "plan": str(folder / "plan"),
    }


def run_sweep(points: RunPoints, ratios, series, payloads, *, out: Path, metric: str,
              dense_split_bytes: int, known: Callable, train: Callable) -> list[dict]:
    """Every point of the sweep, trained where the run has no such variant.

    Arguments:
      known: ``variant -> (plan, budget, check, score)`` of the run's variant
        (checked with its reference; budget: :func:`~experiments.compare.plan_and_budget_bytes`'s).
      train: ``(series, payload, ratio, folder) -> (plan, budget, check,
        score)``: trains the point into ``folder`` (its checkpoints;
        a run started again resumes there) and checks it.

    Each point's folder ``out/sweep/NAME`` gets its plan and a ``point.json``
    (what :func:`load_point` reads).
    """
    import disco_jax as dj
    from experiments.compare import payload_of_variant, write_report

    done, result, named = {}, [], set()
    for name, kind, payload, ratio, variant in points.points(ratios, series, payloads):
        if variant is not None:  # what the run's variant sends (no_comm: nothing, float32)
            payload = payload_of_variant(variant, points.payload)
            name = point_name(kind, payload, ratio)
        if name in named:  # rho 0 in every payload: one point, no communication
            continue
        named.add(name)
        folder = out / "sweep" / name
        key = variant or name
        if key not in done:
            done[key] = known(variant) if variant else train(kind, payload, ratio, folder)
        plan, budget, check, score = done[key]
        dj.save_plan(plan, folder / "plan", overwrite=True)
        checkpoint = (out / variant if variant else folder) / "finetune"
        write_report(folder / "point.json", {
            "series": kind, "variant": variant or SERIES[kind].variant,
            "payload_dtype": payload, "comm_ratio": ratio,
            "checkpoint": str(checkpoint.relative_to(out))})
        result.append(record(name, kind, payload, ratio, variant, metric, score, check,
                             budget, dense_split_bytes, folder))
    return result


def load_point(run: Path, name: str) -> dict:
    """The ``point.json`` of sweep point ``name`` of the run in folder ``run``.

    Raises:
      ConfigError: the run has no such point (the message names the ones it has).
    """
    from disco_jax.errors import ConfigError

    record_path = run / "sweep" / name / "point.json"
    if not record_path.is_file():
        have = sorted(p.parent.name for p in (run / "sweep").glob("*/point.json"))
        raise ConfigError(f"{run} has no sweep point {name!r}; it has "
                          + (", ".join(have) if have else "none (run it with --sweep)"))
    return json.loads(record_path.read_text())


def format_sweep(sweep: list[dict], metric: str, scale: float, label: str,
                 dense_split: float | None) -> list[str]:
    """The sweep as table rows, by series and bytes."""
    unit = "%" if scale == 100 else ""
    rows = ["  sweep (same steps per point; bytes from the plan, == compiled HLO where "
            "verified):",
            f"    {'series':28}{'payload':>9}{'ratio':>7}{'bytes/image':>13}{'reduction':>11}"
            f"{label + ' ' + unit:>10}{'vs dense split':>16}{'verified':>10}"]
    for point in sorted(sweep, key=lambda p: (p["series"], p["payload_dtype"],
                                               p["bytes_per_image"])):
        value = scale * point[metric]
        gap = "" if dense_split is None else f"{value - scale * dense_split:+.2f}"
        reduction = point["comm_reduction"]
        rows.append(f"    {point['label']:28}{point['payload_dtype']:>9}"
                    f"{point['comm_ratio']:>7g}{point['bytes_per_image']:>13,}"
                    f"{'-' if reduction is None else f'{reduction:.2f}x':>11}"
                    f"{value:>10.2f}{gap:>16}{'yes' if point['verified'] else 'NO':>10}")
    return rows


def points_by_name(runs: list[dict]) -> list[dict[str, dict]]:
    """Each report's sweep points by name (none for a report without a sweep)."""
    return [{point["name"]: point for point in run.get("sweep", [])} for run in runs]


def over_seeds(runs: list[dict], metric: str) -> list[dict]:
    """The sweep of several seeds' reports: for each point every seed has,
    its metric and bytes as mean ± std over seeds (:func:`experiments.compare.stats`)."""
    from experiments.compare import stats

    by_name = points_by_name(runs)
    result = []
    for name, first in by_name[0].items():
        points = [seed.get(name) for seed in by_name]
        if any(point is None for point in points):
            continue
        result.append({key: first[key] for key in ("name", "series", "label", "payload_dtype",
                                                   "comm_ratio")}
                      | {metric: stats([p[metric] for p in points]),
                         "bytes_per_image": stats([p["bytes_per_image"] for p in points]),
                         "verified": all(p["verified"] for p in points)})
    return result


def format_sweep_over_seeds(sweep: list[dict], metric: str, scale: float) -> list[str]:
    """The multi-seed sweep as table rows (mean ± std over seeds)."""
    rows = [f"  {'series':28}{'payload':>9}{'ratio':>7}{'bytes/image':>13}{'mean':>9}"
            f"{'std':>7}   per seed"]
    for point in sorted(sweep, key=lambda p: (p["series"], p["payload_dtype"],
                                               p["bytes_per_image"]["mean"])):
        value = point[metric]
        rows.append(f"  {point['label']:28}{point['payload_dtype']:>9}{point['comm_ratio']:>7g}"
                    f"{point['bytes_per_image']['mean']:>13,.0f}{scale * value['mean']:>9.2f}"
                    f"{scale * (value['std'] or 0):>7.2f}   ("
                    + ", ".join(f"{scale * v:.2f}" for v in value["values"]) + ")")
    return rows
