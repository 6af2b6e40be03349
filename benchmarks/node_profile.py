"""One node's side of the per-node profile: where a node's time and CPU go.

Run by :mod:`benchmarks.profile` ``--nodes N`` through the launcher, one
process per node, each pinned to its own core:

    python -m disco_jax.launch --nodes 2 --cpus 0,1 -- benchmarks.node_profile --out DIR

Every node builds the dense split and DISCO programs of
:mod:`benchmarks.latency` (random weights, random exact masks at
``--comm-ratio`` or ``--budgets``'s k per layer; with ``--overlap`` also
DISCO overlapped) and, for each, times ``--repeats`` calls, reading its own
process's CPU time (``getrusage``) and every thread's (``/proc/self/task``, in
clock ticks) before and after, then runs ``--repeats`` calls under
``jax.profiler`` and reads the time of every HLO instruction from its own
trace (one process, one device, one trace: unlike a mesh of emulated devices
in one process, the events cover the node's work), named as
:mod:`benchmarks.profile` names them (:func:`benchmarks.profile.traced_rows`:
conv shapes, products, the exchanges as one row), and from the same trace
the time during which a conv or product ran while an exchange was in flight.
Node i writes ``DIR/node{i}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.node_profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--comm-ratio", type=float, default=0.2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--budgets", type=Path,
                        help="a trained model's report or plan folder: DISCO's k per layer")
    parser.add_argument("--overlap", action="store_true",
                        help="also DISCO overlapped (disco_overlap)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="folder for node{i}.json")
    args = parser.parse_args(argv)
    args.batches = [args.batch]
    return args


def thread_cpu() -> dict[str, tuple[str, float, float]]:
    """``{thread id: (name, user s, system s)}`` of this process's threads now
    (Linux ``/proc``; empty elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found = {}
    root = Path("/proc/self/task")
    if not root.is_dir():
        return found
    for task in root.iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        found[task.name] = (name, int(fields[11]) / ticks, int(fields[12]) / ticks)
    return found


def process_cpu() -> float:
    """This process's CPU seconds so far, user and system (``getrusage``: finer
    than the threads' clock ticks)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_per_call(before: dict, after: dict, process_s: float, calls: int) -> dict:
    """The process's CPU milliseconds per call (``process_s`` over ``calls``) and its
    busiest threads' between two :func:`thread_cpu` readings (clock ticks: coarse)."""
    threads = []
    for tid, (name, user, system) in after.items():
        _, user0, system0 = before.get(tid, (name, 0.0, 0.0))
        threads.append({"thread": name, "tid": int(tid),
                        "user_ms": 1e3 * (user - user0) / calls,
                        "system_ms": 1e3 * (system - system0) / calls})
    threads.sort(key=lambda t: -(t["user_ms"] + t["system_ms"]))
    return {"process_ms": 1e3 * process_s / calls,
            "threads": [t for t in threads[:4] if t["user_ms"] + t["system_ms"] > 0]}


def profile_program(compiled, inputs, batch: int, repeats: int) -> dict:
    """Wall time, CPU per thread and traced time per instruction kind of one program."""
    import jax

    from benchmarks.latency import timed
    from benchmarks.profile import traced_rows

    run = lambda: jax.block_until_ready(compiled(*inputs))  # noqa: E731
    run()
    before, cpu_begin, begin = thread_cpu(), process_cpu(), time.perf_counter()
    wall = timed(run, repeats)  # one more call than repeats: its warm-up
    elapsed, cpu_s = time.perf_counter() - begin, process_cpu() - cpu_begin
    cpu = cpu_per_call(before, thread_cpu(), cpu_s, repeats + 1)
    rows, together = traced_rows(compiled, inputs, batch, repeats)
    return {"wall_ms": wall["median_ms"], "wall_times_ms": wall["times_ms"],
            "cpu_per_call": cpu, "core_busy": cpu_s / elapsed, "rows": rows,
            "products_during_exchanges_ms": together}


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    import disco_jax as dj
    from benchmarks.latency import compile_variants

    mesh = dj.make_mesh(jax.device_count())
    programs, costs = compile_variants(args, jax.device_count(), mesh)
    report = {"node": jax.process_index(), "nodes": jax.device_count(),
              "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
              "variants": {}}
    for (variant, batch), (compiled, inputs, info) in programs.items():
        report["variants"][variant] = {**profile_program(compiled, inputs, batch, args.repeats),
                                       **info, "comm_bytes_per_image": costs[variant].comm_bytes,
                                       "flops_per_image": costs[variant].flops}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"node{jax.process_index()}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
