"""Inference latency over real, rate-limited links: single node, dense split, DISCO.

    python -m benchmarks.network                      # ResNet-50 and -18, batch 1 and 8, 224 px
    python -m benchmarks.network --quick              # ResNet-18, batch 1: under 5 minutes
    python -m benchmarks.network --rates 100mbit --batches 1 --models resnet50

Two nodes, one OS process each (:mod:`disco_jax.launch`, jax's runtime, CPU
collectives over gloo), each pinned to its own core (``taskset``). The
single-node rows come from :mod:`benchmarks.single`, run after the nodes on
node 0's core: disco_jax's best single-device program (the faster of the
``nodes=1`` network's inference and training forms under ``jax.jit``) and,
as reference rows, ONNX Runtime running that program exported to ONNX and
TensorFlow running the standard Keras application of the architecture (with
``pip install -e ".[bench]"``; otherwise those rows say "not installed").
The links are real TCP: both node
processes run in a network namespace this benchmark creates, whose loopback
has MTU 1500 and a ``tc`` tbf qdisc at each rate. Link model: the loopback
is one queue, so the rate is shared by both directions (a half-duplex link:
when both nodes send B bytes at once, 2B bytes pass through the rate); the
bytes the plans count (every node's sends) are what crosses it. Making the
namespace needs root; without it the benchmark says so and runs only the
unlimited case on 127.0.0.1. The namespace is removed at the end, also when
the run is interrupted.

Latency does not depend on what the weights learned: the networks have random
weights, DISCO random exact masks at ``--comm-ratio`` (0.2), at the paper's
224 px input. ``--budgets PLAN`` gives DISCO a trained plan's k per layer
instead (e.g. the main job's learned allocation, which sends from few layers:
fewer exchanges), each layer reading k random directions as the trained model
does. ``--overlap`` adds a float32 DISCO row whose layers compute the
product over a node's own channels apart from the one over the received
channels (:func:`disco_jax.to_inference` with ``overlap=True``), so that it
can run while the exchange is in flight. The report (``--report``, JSON)
has, per model and batch, the median latency over ``--repeats`` runs, the
min-max spread, the speedups, and where the time goes (compute = the
unlimited link, transfer = bytes / rate, per-message latency x messages);
``--plot`` draws latency against bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import add_xla_defaults_option, apply_xla_flags
from benchmarks.latency import OVERLAPPED, disco_variant, parse_payloads, rate_bits

RATES = ("100mbit", "1gbit", "unlimited")
LINK_MODEL = ("one network namespace; its loopback (MTU 1500) behind a tc tbf qdisc at the "
              "rate, shared by both directions (half-duplex)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.network",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet50,resnet18")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rates", default=",".join(RATES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--comm-ratio", type=float, default=0.2)
    parser.add_argument("--budgets", type=Path,
                        help="a trained model's report or plan folder (e.g. "
                             "results/resnet50_n2_int8_r01_fisher.json, the main job's learned "
                             "allocation): DISCO sends its k per layer, in random directions, "
                             "instead of --comm-ratio's random channels")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="what disco_jax's products compute in, on the nodes and the "
                             "single node (ONNX Runtime and TensorFlow run float32)")
    parser.add_argument("--payloads", default="float32,int8",
                        help="what DISCO's channels travel as, one DISCO row each (the same "
                             "channels; float32 first: the main row; default float32,int8)")
    parser.add_argument("--overlap", action="store_true",
                        help="one more DISCO row: float32, every layer overlapped (the "
                             "product over a node's own channels runs apart from the one over "
                             "the received channels, while the exchange is in flight)")
    parser.add_argument("--cpus", default="0,1", help="the two nodes' cores (default 0,1)")
    parser.add_argument("--quick", action="store_true",
                        help="ResNet-18, batch 1, 3 repeats: under 5 minutes")
    add_xla_defaults_option(parser)
    parser.add_argument("--report", type=Path, default=Path("reports/network.json"))
    parser.add_argument("--plot", type=Path, help="PNG (default: the report's name, .png)")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.repeats = "resnet18", "1", 3
    args.models = args.models.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    args.rates = args.rates.split(",")
    for rate in args.rates:
        try:
            rate_bits(rate)
        except ValueError as err:
            parser.error(str(err))
    args.payloads = parse_payloads(parser, args.payloads)
    if args.payloads[0] != "float32":
        parser.error(f"--payloads starts with float32 (DISCO's main row), got {args.payloads}")
    args.cpus = [int(c) for c in args.cpus.split(",")]
    if len(args.cpus) != 2:
        parser.error(f"--cpus takes the two nodes' cores, got {args.cpus}")
    if not 0.0 <= args.comm_ratio <= 1.0:
        parser.error(f"--comm-ratio must be in [0, 1], got {args.comm_ratio}")
    if args.budgets is not None and not args.budgets.exists():
        parser.error(f"--budgets {args.budgets}: no such report or plan folder")
    args.plot = args.plot or args.report.with_suffix(".png")
    return args


def can_shape_links() -> str | None:
    """None if this process can make network namespaces and tc qdiscs, else why not."""
    if os.geteuid() != 0:
        return "not root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found (apt-get install iproute2)"
    probe = f"disco-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:  # a container without the right to make namespaces
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Namespace:
    """A network namespace for the nodes, removed on exit (also on SIGTERM/Ctrl-C)."""

    def __init__(self):
        self.name = f"disco-bench-{os.getpid()}"

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "mtu", "1500", "up"],
                       check=True)
        self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        signal.signal(signal.SIGTERM, self._previous)
        return False

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def measure(model: str, args, rates: list[str], namespace: Namespace | None) -> dict:
    """Runs :mod:`benchmarks.latency` on two launched nodes; returns node 0's timings."""
    from disco_jax.launch import launch_local

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "latency.json"
        argv = ["--model", model, "--image-size", str(args.image_size),
                "--comm-ratio", str(args.comm_ratio), "--compute-dtype", args.compute_dtype,
                "--payloads", ",".join(args.payloads),
                "--batches", ",".join(map(str, args.batches)), "--rates", ",".join(rates),
                "--repeats", str(args.repeats), "--out", str(out)]
        if args.budgets is not None:
            argv += ["--budgets", str(args.budgets)]  # the nodes run in this folder
        if args.overlap:
            argv.append("--overlap")
        if namespace is not None:
            argv.append("--shape-link")
        launch_local(2, "benchmarks.latency", argv, cpus=args.cpus,
                     prefix=None if namespace is None else namespace.prefix,
                     heartbeat_timeout=120)  # a slow link delays heartbeats
        return json.loads(out.read_text())


class SingleRowsFailed(RuntimeError):
    """:mod:`benchmarks.single` stopped with an error (its stderr is in the message)."""


def measure_single(model: str, args) -> dict:
    """Runs :mod:`benchmarks.single` on node 0's core; returns its report."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "single.json"
        command = ["taskset", "-c", str(args.cpus[0]), sys.executable, "-m", "benchmarks.single",
                   "--model", model, "--image-size", str(args.image_size),
                   "--compute-dtype", args.compute_dtype,
                   "--batches", ",".join(map(str, args.batches)),
                   "--repeats", str(args.repeats), "--out", str(out),
                   *(["--xla-defaults"] if args.xla_defaults else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SingleRowsFailed(f"the single-node rows failed ({' '.join(command[3:])}):\n"
                               + done.stderr[-3000:])
        print(done.stdout, end="", flush=True)
        return json.loads(out.read_text())


REFERENCES = ("onnxruntime", "tensorflow")


def summarize(timings: dict, single_report: dict) -> list[dict]:
    """The report's entries, one per batch size (the issue's schema, plus where
    the time goes and the reference engines)."""
    runs = []
    unlimited = next((link for link in timings["links"] if link["rate"] == "unlimited"), None)
    engines = single_report["engines"]
    for batch in timings["batches"]:
        single = engines["disco_jax"]["timings"][str(batch)]
        references = {}
        for name in REFERENCES:
            row = engines.get(name, {"status": "not run"})
            references[name] = ({"status": row["status"]} if "timings" not in row else
                                {"ms": row["timings"][str(batch)]["median_ms"],
                                 "spread_ms": [row["timings"][str(batch)]["min_ms"],
                                               row["timings"][str(batch)]["max_ms"]],
                                 "engine": row["engine"],
                                 "parameters": row.get("parameters")})
        links = []
        narrow = timings.get("payloads", ["float32"])[1:]  # DISCO's rows beside float32's
        overlapped = [OVERLAPPED] if timings.get("overlap") else []
        variants = ["dense_split", "disco", *map(disco_variant, narrow), *overlapped]
        for link in timings["links"]:
            result = {v: link["results"][f"{v}/{batch}"] for v in variants}
            bits = rate_bits(link["rate"])
            split_ms = result["dense_split"]["median_ms"]
            entry = {
                "rate": link["rate"], "single_ms": single["median_ms"],
                "dense_split_ms": split_ms,
                "disco_ms": result["disco"]["median_ms"],
                "spread_ms": {"single": [single["min_ms"], single["max_ms"]],
                              **{v: [r["min_ms"], r["max_ms"]] for v, r in result.items()}},
                "speedup_vs_dense_split": split_ms / result["disco"]["median_ms"],
                "speedup_vs_single": single["median_ms"] / result["disco"]["median_ms"],
                "per_message_ms": link["per_message_ms"],
                "exchange_1mb_ms": link["exchange_1mb_ms"],
                "payloads": {payload: {
                    "disco_ms": result[disco_variant(payload)]["median_ms"],
                    "speedup_vs_dense_split": split_ms / result[disco_variant(payload)][
                        "median_ms"],
                    "speedup_vs_single": single["median_ms"] / result[disco_variant(payload)][
                        "median_ms"],
                    "bytes_ratio_vs_dense_split": (
                        timings["comm_bytes_per_image"]["dense_split"]
                        / timings["comm_bytes_per_image"][disco_variant(payload)])}
                    for payload in narrow},
            }
            if overlapped:
                overlap_ms = result[OVERLAPPED]["median_ms"]
                entry["overlapped"] = {
                    "disco_ms": overlap_ms,
                    "speedup_vs_not_overlapped": result["disco"]["median_ms"] / overlap_ms,
                    "speedup_vs_single": single["median_ms"] / overlap_ms}
            breakdown = {}
            for variant in variants:
                program = timings["programs"][f"{variant}/{batch}"]
                breakdown[variant] = {
                    "compute_ms": (None if unlimited is None else
                                   unlimited["results"][f"{variant}/{batch}"]["median_ms"]),
                    "transfer_ms": (None if bits is None else
                                    1e3 * 8 * program["hlo_bytes"] / bits),
                    "messages": program["messages"],
                    "messages_with_work_beside": program["messages_with_work_beside"],
                    "per_message_total_ms": program["messages"] * link["per_message_ms"],
                }
            entry["where_the_time_goes"] = breakdown
            links.append(entry)
        runs.append({
            "model": timings["model"], "nodes": timings["nodes"], "batch": batch,
            "input_shape": timings["input_shape"], "comm_ratio": timings["comm_ratio"],
            "budgets": timings["budgets"], "compute_dtype": timings["compute_dtype"],
            "payloads": timings.get("payloads", ["float32"]),
            "comm_bytes_per_image": timings["comm_bytes_per_image"],
            "flops_per_node_per_image": timings["flops_per_node_per_image"],
            "single": {"program": single["program"], "ms": single["median_ms"],
                       "parameters": engines["disco_jax"]["parameters"],
                       "programs_ms": {name: times[str(batch)]["median_ms"] for name, times
                                       in engines["disco_jax"]["programs"].items()}},
            "references": references, "links": links})
    return runs


def _reference_ms(run: dict, name: str) -> str:
    row = run["references"][name]
    return f"{row['ms']:.1f}" if "ms" in row else "-"


def format_table(runs: list[dict]) -> str:
    """The latency table, and what each reference column ran (or why it is empty)."""
    narrow = list(runs[0]["links"][0].get("payloads", {})) if runs else []
    overlapped = bool(runs) and "overlapped" in runs[0]["links"][0]
    rows = [f"{'model':9} {'batch':>5} {'link':>10} {'single ms':>10} {'ONNX RT':>8} "
            f"{'TF':>8} {'dense split':>12} {'DISCO ms':>10} {'vs dense split':>15} "
            f"{'vs single':>10}"
            + "".join(f" {'DISCO ' + p:>12} {'vs split':>9}" for p in narrow)
            + (f" {'overlapped':>11} {'vs single':>10}" if overlapped else "")]
    for run in runs:
        for link in run["links"]:
            rows.append(f"{run['model']:9} {run['batch']:>5} {link['rate']:>10} "
                        f"{link['single_ms']:>10.1f} {_reference_ms(run, 'onnxruntime'):>8} "
                        f"{_reference_ms(run, 'tensorflow'):>8} {link['dense_split_ms']:>12.1f} "
                        f"{link['disco_ms']:>10.1f} {link['speedup_vs_dense_split']:>14.2f}x "
                        f"{link['speedup_vs_single']:>9.2f}x"
                        + "".join(f" {link['payloads'][p]['disco_ms']:>12.1f} "
                                  f"{link['payloads'][p]['speedup_vs_dense_split']:>8.2f}x"
                                  for p in narrow)
                        + (f" {link['overlapped']['disco_ms']:>11.1f} "
                           f"{link['overlapped']['speedup_vs_single']:>9.2f}x"
                           if overlapped else ""))
    notes = {}
    for run in runs:
        notes.setdefault(f"{run['model']} single node", f"disco_jax {run['single']['program']}")
        for name, row in run["references"].items():
            notes.setdefault(f"{run['model']} {name}", row.get("engine") or row["status"])
    rows += [f"  {key}: {value}" for key, value in notes.items()]
    return "\n".join(rows)


def plot(runs: list[dict], path: Path) -> Path:
    """Latency against link rate, one panel per model and batch."""
    from experiments.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False,
                             layout="constrained")
    for ax, run in zip(axes[0], runs, strict=True):
        links = run["links"]
        names = [link["rate"] for link in links]
        for key, label in (("single_ms", "single node (disco_jax)"),
                           ("dense_split_ms", "dense split"),
                           ("disco_ms", "DISCO (" + (
                               f"comm ratio {run['comm_ratio']:g}" if run["budgets"] is None
                               else f"k per layer of {Path(run['budgets']).name}") + ")")):
            ax.plot(names, [link[key] for link in links], marker="o", label=label)
        for payload in links[0].get("payloads", {}):
            ax.plot(names, [link["payloads"][payload]["disco_ms"] for link in links],
                    marker="o", label=f"DISCO, {payload} payload")
        if "overlapped" in links[0]:
            ax.plot(names, [link["overlapped"]["disco_ms"] for link in links], marker="o",
                    label="DISCO, overlapped")
        for name, label in (("onnxruntime", "ONNX Runtime, 1 node"),
                            ("tensorflow", "TensorFlow, 1 node")):
            if "ms" in run["references"][name]:
                ax.plot(names, [run["references"][name]["ms"]] * len(names), linestyle=":",
                        label=label)
        ax.set_yscale("log")
        ax.set_xlabel("link")
        ax.set_ylabel("latency (ms, median)")
        products = "" if run["compute_dtype"] == "float32" else f", {run['compute_dtype']}"
        ax.set_title(f"{run['model']}, batch {run['batch']}, {run['nodes']} nodes{products}")
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    from disco_jax.launch import NodeFailure
    apply_xla_flags(args)  # before the nodes and the single rows start: they inherit it

    why_not = can_shape_links()
    rates = args.rates
    if why_not is not None:
        print(f"cannot make a rate-limited link ({why_not}): running only the unlimited case "
              "on 127.0.0.1", flush=True)
        rates = ["unlimited"]
    elif "unlimited" not in rates:
        rates = [*rates, "unlimited"]  # the compute time that the breakdown needs
    started, runs = time.time(), []
    try:
        with Namespace() if why_not is None else contextlib.nullcontext() as namespace:
            for model in args.models:
                print(f"{model}: 2 nodes on cores {args.cpus}, links {rates}", flush=True)
                timings = measure(model, args, rates, namespace)
                print(f"{model}: the single-node rows on core {args.cpus[0]}", flush=True)
                runs += summarize(timings, measure_single(model, args))
    except (NodeFailure, SingleRowsFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the network namespace was removed", file=sys.stderr)
        return 130
    report = {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.date.today().isoformat(),
        "command": "python -m benchmarks.network " + " ".join(sys.argv[1:] if argv is None
                                                               else argv),
        "link_model": LINK_MODEL if why_not is None else f"127.0.0.1, no limit ({why_not})",
        "cpus": {"nodes": args.cpus, "single": args.cpus[0]}, "repeats": args.repeats,
        "runs": runs, "seconds": round(time.time() - started, 1),
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    partial = args.report.with_name(args.report.name + ".partial")
    partial.write_text(json.dumps(report, indent=1))
    partial.replace(args.report)
    print(format_table(runs))
    print(f"report written to {args.report}, plot to {plot(runs, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
