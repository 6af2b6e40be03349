"""Memory per node, measured: the single-device model against each node of dense split and DISCO.

    python -m benchmarks.memory                   # ResNet-50, 224 px, batch 1, 2 and 4 nodes
    python -m benchmarks.memory --model resnet18 --image-size 32 --nodes 2   # under a minute

DISCO exists so that a model too big for one small device runs on several:
what matters is what each node holds. For the single-device model (the
network built for one node: its inference form, BatchNorm folded) and, at each
``--nodes`` N, the dense split and DISCO (random exact masks at
``--comm-ratio``; memory does not depend on what the weights learned), the
benchmark writes per-node bundles (:mod:`disco_jax.bundle`) and launches one
OS process per node (:mod:`disco_jax.launch`) running
:mod:`benchmarks.node_memory`: each reads only its own bundle, builds the
inference form without making any other weights, and runs a batch. Each
process reports the bytes of its weights on disk and on its device and its
peak resident memory from the OS (``/proc/self/status`` VmHWM). The runtime's
own memory is measured separately, by the same launch with no model
(``--runtime-only``) at each process count; a node's *model share* is its
peak minus the runtime's peak at the same place.

Every launch runs twice with one program cache (``--program-cache``,
:mod:`disco_jax.programs`): the first run compiles the node's program and
keeps it, the second (*deployed*) loads it, as a deployed node that was
started once before does. Compiling takes transient memory of XLA's own,
more for a node's program (a gather and a concatenation beside every conv)
than for the single-device one; both peaks are reported.

Targets (N = 2, comm ratio 0.2): each DISCO node's weights <= 0.35 of the
single-device model's, and each DISCO node's process peak below the
single-device process's peak by at least the weights the node does not hold
(deployed; the first run's margin is reported beside it).
The report (``--report``, JSON) has every process's figures and the targets.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

MIB = 1 << 20


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--nodes", default="2,4", help="node counts, comma-separated")
    parser.add_argument("--comm-ratio", type=float, default=0.2)
    parser.add_argument("--report", type=Path, default=Path("reports/memory.json"))
    args = parser.parse_args(argv)
    try:
        args.nodes = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        parser.error(f"--nodes takes comma-separated node counts, got {args.nodes!r}")
    if any(n < 2 for n in args.nodes):
        parser.error(f"--nodes must be at least 2 each (the single device is always measured), "
                     f"got {args.nodes}")
    if not 0.0 <= args.comm_ratio <= 1.0:
        parser.error(f"--comm-ratio must be in [0, 1], got {args.comm_ratio}")
    return args


def export(args, variant: str, nodes: int, folder: Path) -> Path:
    """Bundles of the ``variant`` network on ``nodes`` nodes (random weights)."""
    import jax

    import disco_jax as dj
    from benchmarks.node_memory import build_network
    from disco_jax import sparsify
    from disco_jax.bundle import export_bundles

    settings = {"model": args.model, "classes": args.classes, "nodes": nodes,
                "variant": variant}
    model = build_network(settings)
    sparsify.FixedMask("dense_split").update(model, 0)
    if variant == "disco":
        dj.set_random_masks(model, jax.random.key(1), args.comm_ratio)
    model.eval()
    out = folder / f"{variant}-n{nodes}"
    export_bundles(model, dj.compile_plan(model), out, settings=settings)
    return out


def launch(nodes: int, argv: list[str], out: Path) -> list[list[dict]]:
    """Runs :mod:`benchmarks.node_memory` on ``nodes`` launched processes, twice
    with one program cache: ``[first, deployed]``, each the nodes' records."""
    from disco_jax.launch import launch_local

    runs = []
    for run in ("first", "deployed"):
        launch_local(nodes, "benchmarks.node_memory",
                     [*argv, "--program-cache", str(out / "programs"), "--out", str(out / run)],
                     out=sys.stderr)
        runs.append([json.loads((out / run / f"node{i}.json").read_text())
                     for i in range(nodes)])
    return runs


def measure(args) -> dict:
    forms = [("single", 1)] + [(variant, n) for n in args.nodes
                               for variant in ("dense_split", "disco")]
    shape = ["--batch", str(args.batch), "--image-size", str(args.image_size)]
    rows, runtime = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for count in sorted({n for _, n in forms}):
            runtime[count] = launch(count, ["--runtime-only", *shape], tmp / f"runtime-{count}")
        for variant, nodes in forms:
            bundles = export(args, variant, nodes, tmp)
            print(f"{variant} on {nodes} node(s): bundles written, launching", file=sys.stderr,
                  flush=True)
            first, deployed = launch(nodes, ["--bundles", str(bundles), *shape],
                                     tmp / f"run-{variant}-{nodes}")
            for record, compiling in zip(deployed, first, strict=True):
                node = record["node"]
                base = runtime[nodes][1][node]["resident"]["ran"]["peak"]
                peak = record["resident"]["ran"]["peak"]
                rows.append({"form": variant, "nodes": nodes, "node": node,
                             "weights_disk_bytes": record["weights_disk_bytes"],
                             "weights_device_bytes": record["weights_device_bytes"],
                             "device_bytes_in_use": record["device_bytes_in_use"],
                             "peak_bytes": peak, "runtime_peak_bytes": base,
                             "model_share_bytes": peak - base,
                             "first_peak_bytes": compiling["resident"]["ran"]["peak"],
                             "first_runtime_peak_bytes":
                                 runtime[nodes][0][node]["resident"]["ran"]["peak"],
                             "resident": record["resident"],
                             "first_resident": compiling["resident"]})
    return {"rows": rows,
            "runtime": {str(n): {"first": [r["resident"] for r in runs[0]],
                                 "deployed": [r["resident"] for r in runs[1]]}
                        for n, runs in runtime.items()}}


def targets(rows: list[dict], comm_ratio: float) -> list[dict]:
    single = next(r for r in rows if r["form"] == "single")
    disco = [r for r in rows if r["form"] == "disco" and r["nodes"] == 2]
    if not disco or abs(comm_ratio - 0.2) > 1e-9:
        return []
    share = max(r["weights_device_bytes"] for r in disco) / single["weights_device_bytes"]

    def margin(peak: str) -> float:
        return min(single[peak] - r[peak]
                   - (single["weights_device_bytes"] - r["weights_device_bytes"])
                   for r in disco) / MIB

    below = "process peak below the single device's by at least the weights it does not hold"
    return [
        {"name": "each DISCO node's weights <= 0.35 of the single device's (N = 2)",
         "value": share, "met": share <= 0.35},
        {"name": f"deployed (program loaded, not compiled): each DISCO node's {below} "
                 "(N = 2): the smallest margin, MiB",
         "value": margin("peak_bytes"), "met": margin("peak_bytes") >= 0},
        {"name": f"first run (compiling): each DISCO node's {below} (N = 2): the smallest "
                 "margin, MiB",
         "value": margin("first_peak_bytes"), "met": margin("first_peak_bytes") >= 0},
    ]


def format_table(report: dict) -> str:
    lines = [f"{report['model']} at {report['image_size']} px, batch {report['batch']}, comm "
             f"ratio {report['comm_ratio']}; MiB; peak = the process's VmHWM, deployed = "
             "its compiled program loaded from the program cache, first = compiling it",
             f"  {'form':<12} {'N':>2} {'node':>4}  {'disk':>7} {'device':>7}  "
             f"{'peak':>7} {'runtime':>7} {'model':>7}   {'first':>7} {'runtime':>7}",
             f"  {'':<12} {'':>2} {'':>4}  {'weights':>7} {'weights':>7}  "
             f"{'':>7} {'':>7} {'share':>7}   {'peak':>7} {'':>7}"]
    for r in report["rows"]:
        mib = {key: value / MIB for key, value in r.items() if key.endswith("bytes")
               and value is not None}
        lines.append(f"  {r['form']:<12} {r['nodes']:>2} {r['node']:>4}  "
                     f"{mib['weights_disk_bytes']:7.1f} {mib['weights_device_bytes']:7.1f}  "
                     f"{mib['peak_bytes']:7.1f} {mib['runtime_peak_bytes']:7.1f} "
                     f"{mib['model_share_bytes']:7.1f}   {mib['first_peak_bytes']:7.1f} "
                     f"{mib['first_runtime_peak_bytes']:7.1f}")
    for target in report["targets"]:
        lines.append(f"  {target['name']}: {target['value']:.2f}   "
                     f"{'met' if target['met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    from disco_jax.errors import DiscoError
    from disco_jax.launch import NodeFailure

    try:
        measured = measure(args)
    except (NodeFailure, DiscoError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"benchmark": "memory", "date": datetime.date.today().isoformat(),
              "model": args.model, "image_size": args.image_size, "classes": args.classes,
              "batch": args.batch, "comm_ratio": args.comm_ratio, "nodes": args.nodes,
              "jax": jax.__version__, **measured,
              "targets": targets(measured["rows"], args.comm_ratio)}
    print(format_table(report), flush=True)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1))
    print(f"report written to {args.report}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
