"""Where a program's time goes, conv shape by conv shape: one device beside ONNX Runtime, or a node.

    taskset -c 0 python -m benchmarks.profile --model resnet50 --batch 1 --out profile.json
    python -m benchmarks.profile --model resnet50 --batch 1 --nodes 2 --out nodes.json

disco_jax's single-device program (the inference form of the ``nodes=1``
network, BatchNorm folded, under ``jax.jit``, weights as arguments: the
"single node" row of :mod:`benchmarks.single`) runs ``--repeats`` times under
``jax.profiler``; the time of every HLO instruction XLA:CPU executes is read
from the trace. Each instruction is named by what it computes: a convolution
(or a fusion around one) by its kernel, stride, input map and channels, a
matrix product (or a 1x1 conv: one product, every output pixel a row, as
XLA often rewrites it) by its sizes, anything else by its kind. With the
``[bench]`` extra, ONNX Runtime runs the same function (exported with
jax2onnx, one thread) with its own profiler on, and its conv and product
nodes are named the same way,
so the table shows per conv shape what each engine spends on it and the
GFLOP/s it reaches. The XLA side needs nothing but jax.

``--nodes N`` profiles the dense split's and DISCO's node programs instead:
one OS process per node (:mod:`disco_jax.launch`), node i pinned to core i
(``--unpinned``: the nodes' threads may run on any core), each tracing its own
program (:mod:`benchmarks.node_profile`). On a mesh of emulated devices in one
process XLA:CPU's trace events do not cover the work (per-op times summed to
half of the wall time, conv rates above the core's peak); one process per
node does not have that problem, and it is how the nodes run. Per node the
table gives the wall time, the time inside the exchanges (collective-permute:
waiting for the peer and moving the bytes), in convs and products and in
everything else, and the CPU time the node's process spent per call, thread
by thread (from ``/proc``): on CPUs the exchanges' transport (gloo over TCP)
has a thread of its own that shares the node's core; and the time in which
a conv or product ran while an exchange was in flight ("together": what
overlap can gain). ``--budgets`` and ``--overlap`` profile the programs that
:mod:`benchmarks.network` times with those options.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path

from benchmarks import add_xla_defaults_option, apply_xla_flags
from benchmarks.single import _input, _missing, _pure, single_device_forms
from disco_jax.layers import COMPUTE_DTYPES

_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]\S*\s+([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
OTHER = "everything else"
EXCHANGES = "exchanges (collective-permute)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="float32")
    parser.add_argument("--nodes", type=int, default=1,
                        help="1: the single-device program; N > 1: the node programs of the "
                             "dense split and DISCO, one process per node")
    parser.add_argument("--comm-ratio", type=float, default=0.2,
                        help="DISCO's random exact masks (--nodes > 1)")
    parser.add_argument("--budgets", type=Path,
                        help="--nodes > 1: DISCO sends a trained model's k per layer (its "
                             "report or plan folder), as in benchmarks.network")
    parser.add_argument("--overlap", action="store_true",
                        help="--nodes > 1: also DISCO with every layer overlapped")
    parser.add_argument("--unpinned", action="store_true",
                        help="--nodes > 1: do not pin node i to core i")
    parser.add_argument("--out", type=Path, required=True)
    add_xla_defaults_option(parser)
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes must be 1 (the single device) or more, got {args.nodes}")
    return args


def conv_key(kernel: int, in_hw, c_in: int, out_hw, c_out: int) -> str:
    """``"conv 3x3/2 56x56x64 -> 28x28x128"``: one name for a conv in both engines (the
    stride read from the maps' sizes)."""
    stride = max(1, round(in_hw[0] / out_hw[0]))
    return (f"conv {kernel}x{kernel}/{stride} {in_hw[0]}x{in_hw[1]}x{c_in} -> "
            f"{out_hw[0]}x{out_hw[1]}x{c_out}")


def product_key(rows: int, k: int, n: int) -> str:
    """``"matmul 3136x64 @ 64x256"``: a matrix product, or a 1x1 conv (every
    output pixel a row), which engines run as one (XLA often rewrites it so)."""
    return f"matmul {rows}x{k} @ {k}x{n}"


def _computations(hlo: str) -> dict[str, dict[str, tuple]]:
    """``{computation: {instruction: (dims, opcode, rest of line)}}``, the entry as ``""``."""
    found, current = {}, None
    for line in hlo.splitlines():
        header = _COMPUTATION.match(line)
        if header and "=" not in line.split("{")[0]:
            current = "" if line.lstrip().startswith("ENTRY") else header.group(1)
            found[current] = {}
            continue
        match = _INSTRUCTION.match(line)
        if match and current is not None:
            name, _, dims, opcode, rest = match.groups()
            found[current][name] = (tuple(int(d) for d in dims.split(",") if d), opcode, rest)
    return found


def _operands(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split(")")[0])


def _describe(name, computation, computations, batch) -> tuple[str, float]:
    """(what instruction ``name`` of ``computation`` computes, its FLOPs per call)."""
    dims, opcode, rest = computations[computation][name]
    if opcode in ("fusion", "call", "custom-call"):
        called = re.search(r"(?:calls|to_apply)=%?([\w.\-]+)", rest)
        if called and called.group(1) in computations:
            inner = computations[called.group(1)]
            for kind in ("convolution", "dot"):
                for inner_name, (_, inner_opcode, _) in inner.items():
                    if inner_opcode == kind:
                        return _describe(inner_name, called.group(1), computations, batch)
        return OTHER, 0.0
    table = computations[computation]
    if opcode == "convolution":
        window = re.search(r"size=(\d+)x(\d+)", rest)
        labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", rest)
        lhs, rhs = (table[o][0] for o in _operands(rest)[:2])
        kernel = int(window.group(1)) if window else 1
        lhs_labels, rhs_labels, out_labels = labels.groups()
        spatial = [lhs[lhs_labels.index(d)] for d in "01"]
        out_spatial = [dims[out_labels.index(d)] for d in "01"]
        c_in, c_out = rhs[rhs_labels.index("i")], rhs[rhs_labels.index("o")]
        flops = 2.0 * math.prod(dims) * kernel * kernel * c_in
        if dims[out_labels.index("b")] != batch:  # a gradient-shaped conv: not in inference
            return f"conv {kernel}x{kernel} (other layout)", flops
        if kernel == 1:
            return product_key(batch * math.prod(out_spatial), c_in, c_out), flops
        return conv_key(kernel, spatial, c_in * _groups(rest), out_spatial, c_out), flops
    if opcode == "dot":
        lhs = table[_operands(rest)[0]][0]
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        k = math.prod(lhs[int(i)] for i in contracting.group(1).split(",") if i)
        rows = math.prod(dims) // max(dims[-1], 1)
        return product_key(rows, k, dims[-1]), 2.0 * math.prod(dims) * k
    return OTHER, 0.0


def _groups(rest: str) -> int:
    match = re.search(r"feature_group_count=(\d+)", rest)
    return int(match.group(1)) if match else 1


def _trace_events(directory: Path) -> list[tuple[str, float, float]]:
    """``(HLO instruction, start, end)`` in microseconds of every executed
    instruction in the trace (jax writes the same events to two files: one is read)."""
    paths = sorted(directory.rglob("*.json.gz"), key=lambda p: p.name != "perfetto_trace.json.gz")
    events = json.load(gzip.open(paths[0]))
    events = events["traceEvents"] if isinstance(events, dict) else events
    return [(event["args"]["hlo_op"], event["ts"], event["ts"] + event.get("dur", 0.0))
            for event in events
            if event.get("ph") == "X" and (event.get("args") or {}).get("hlo_op")]


def _union(intervals) -> list[tuple[float, float]]:
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def time_together(first, second) -> float:
    """How long some interval of ``first`` and some interval of ``second`` run at once."""
    a, b, i, j, total = _union(first), _union(second), 0, 0, 0.0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def _single_program(args, forms):
    """disco_jax's single-device program: (compiled, its arguments)."""
    import jax
    from flax import nnx

    _, inference = forms
    graphdef, state = nnx.split(inference)
    program = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    x = jax.device_put(_input(args, args.batch))
    return program.lower(state, x).compile(), (state, x)


def traced_rows(compiled, arguments, batch: int, repeats: int) -> tuple[dict, float]:
    """Runs ``compiled(*arguments)`` ``repeats`` times under jax's profiler:
    ``{what: {"count", "ms" per call, "flops"}}`` over the entry's instructions,
    each named by :func:`_describe`, the collective-permutes as :data:`EXCHANGES`;
    and the milliseconds per call during which a conv or product ran while an
    exchange was in flight (what overlap gains at most)."""
    import jax

    computations = _computations(compiled.as_text())
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(repeats):
                jax.block_until_ready(compiled(*arguments))
        events = _trace_events(Path(directory))
    durations = collections.Counter()
    for op, start, end in events:
        durations[op] += end - start
    rows = collections.defaultdict(lambda: {"count": 0, "ms": 0.0, "flops": 0.0})
    kinds = {}
    for name, (_, opcode, _) in computations[""].items():
        if name not in durations:
            continue  # parameters, tuples, bitcasts: nothing executed
        if opcode.startswith("collective-permute"):
            key, flops = EXCHANGES, 0.0
        else:
            key, flops = _describe(name, "", computations, batch)
        kinds[name] = key
        rows[key]["count"] += 1
        rows[key]["ms"] += durations[name] / 1000.0 / repeats
        rows[key]["flops"] += flops
    exchanging = [(s, e) for op, s, e in events if kinds.get(op) == EXCHANGES]
    computing = [(s, e) for op, s, e in events
                 if kinds.get(op, "").startswith(("conv", "matmul"))]
    return dict(rows), time_together(exchanging, computing) / 1000.0 / repeats


def profile_xla(args, forms) -> dict:
    import jax

    from benchmarks.latency import timed

    compiled, arguments = _single_program(args, forms)
    wall = timed(lambda: jax.block_until_ready(compiled(*arguments)), args.repeats)
    rows, _ = traced_rows(compiled, arguments, args.batch, args.repeats)  # no exchanges
    return {"engine": f"jax {jax.__version__} (XLA:{jax.devices()[0].platform}), "
                      f"{args.compute_dtype} products",
            "wall_ms": wall["median_ms"], "rows": rows}


def profile_onnxruntime(args, forms) -> dict:
    missing = _missing("onnxruntime", "onnx", "jax2onnx")
    if missing:
        return {"status": missing}
    import onnxruntime
    from jax2onnx import to_onnx

    from benchmarks.latency import timed

    x = _input(args, args.batch)
    proto = to_onnx(_pure(forms[1]), [x.shape], model_name=args.model)
    with tempfile.TemporaryDirectory() as directory:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        wall = timed(lambda: session.run(None, feed), args.repeats)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(directory) / "ort")
        session = onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        session.run(None, feed)  # warm-up, dropped below
        for _ in range(args.repeats):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(runs) // (args.repeats + 1)
    rows = collections.defaultdict(lambda: {"count": 0, "ms": 0.0, "flops": 0.0})
    for event in runs[per_run:]:  # after the warm-up
        key, flops = _describe_onnx(event["args"])
        rows[key]["count"] += 1
        rows[key]["ms"] += event["dur"] / 1000.0 / args.repeats
        rows[key]["flops"] += flops
    for row in rows.values():
        row["count"] //= args.repeats
        row["flops"] /= args.repeats
    return {"engine": f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider, 1 thread)",
            "wall_ms": wall["median_ms"], "rows": rows}


def _describe_onnx(node: dict) -> tuple[str, float]:
    """(what an ONNX Runtime node computes, its FLOPs), named as :func:`_describe` names XLA's."""
    op = node.get("op_name", "")
    if not any(kind in op for kind in ("Conv", "MatMul", "Gemm")):
        return OTHER, 0.0
    shapes = [next(iter(s.values())) for s in node["input_type_shape"]]
    out = next(iter(node["output_type_shape"][0].values()))
    if "Conv" not in op:  # [..., K] @ [K, N]
        rows, k, n = math.prod(shapes[0][:-1]), shapes[0][-1], out[-1]
        return product_key(rows, k, n), 2.0 * rows * k * n
    image, weight = shapes[0], shapes[1]  # NCHW (channels possibly blocked), OIHW
    c_out, c_in_group, kernel = weight[0], weight[1], weight[2]
    flops = 2.0 * math.prod(out[2:]) * out[0] * c_out * c_in_group * kernel * weight[3]
    if kernel == 1:
        return product_key(out[0] * math.prod(out[2:4]), c_in_group, c_out), flops
    # these networks have no grouped convs: the weight's C_in per group is C_in
    return conv_key(kernel, image[2:4], c_in_group, out[2:4], c_out), flops


def table(report: dict) -> str:
    engines = report["engines"]
    xla = engines["disco_jax"]["rows"]
    ort = engines.get("onnxruntime", {}).get("rows", {})
    keys = sorted(set(xla) | set(ort), key=lambda k: -(xla.get(k, {}).get("ms", 0.0)))
    lines = [f"{'what':44} {'n':>3} {'XLA ms':>8} {'GFLOP/s':>8} {'ORT ms':>8} {'GFLOP/s':>8}"]
    for key in keys:
        cells = []
        for rows in (xla, ort):
            row = rows.get(key)
            if row is None:
                cells.append(f"{'':>8} {'':>8}")
                continue
            rate = row["flops"] / row["ms"] / 1e6 if row["ms"] and row["flops"] else 0.0
            cells.append(f"{row['ms']:8.2f} {rate:8.1f}" if rate else f"{row['ms']:8.2f} {'':>8}")
        count = (xla.get(key) or ort.get(key))["count"]
        lines.append(f"{key:44} {count:3d} {cells[0]} {cells[1]}")
    for name, row in engines.items():
        if "rows" in row:
            total = sum(r["ms"] for r in row["rows"].values())
            lines.append(f"{name}: ops {total:.1f} ms, wall {row['wall_ms']:.1f} ms per call "
                         f"({row['engine']})")
        else:
            lines.append(f"{name}: {row['status']}")
    return "\n".join(lines)


def profile_nodes(args) -> dict:
    """Runs :mod:`benchmarks.node_profile` on ``args.nodes`` launched processes."""
    from disco_jax.errors import ConfigError, MeshError
    from disco_jax.launch import launch_local

    cpus = None
    if not args.unpinned:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < args.nodes:
            raise ConfigError(f"--nodes {args.nodes} pins one node per core but this process may "
                              f"use {len(available)} core(s) ({available}); give --unpinned or "
                              f"fewer nodes")
        cpus = available[:args.nodes]
    argv = ["--model", args.model, "--image-size", str(args.image_size),
            "--classes", str(args.classes), "--comm-ratio", str(args.comm_ratio),
            "--batch", str(args.batch), "--compute-dtype", args.compute_dtype,
            "--repeats", str(args.repeats)]
    if args.budgets is not None:
        argv += ["--budgets", str(args.budgets)]
    if args.overlap:
        argv.append("--overlap")
    with tempfile.TemporaryDirectory() as directory:
        codes = launch_local(args.nodes, "benchmarks.node_profile",
                             [*argv, "--out", directory], cpus=cpus, out=sys.stderr)
        if any(codes):
            raise MeshError(f"a node of the profile failed (exit codes {codes}); its "
                            f"output is above")
        nodes = [json.loads((Path(directory) / f"node{i}.json").read_text())
                 for i in range(args.nodes)]
    return {"pinned_cpus": cpus, "nodes": nodes}


def node_table(report: dict) -> str:
    lines = [f"{'variant':13} {'node':>4} {'wall ms':>8} {'exchanges':>9} {'n':>3} "
             f"{'per msg':>7} {'convs':>7} {'other':>7} {'together':>8} {'CPU ms':>7}  "
             f"busiest threads (user/system ms per call)"]
    for node in report["nodes"]:
        for variant, row in node["variants"].items():
            rows = row["rows"]
            exchanges = rows.get(EXCHANGES, {"ms": 0.0, "count": 0})
            convs = sum(r["ms"] for k, r in rows.items() if k.startswith(("conv", "matmul")))
            other = sum(r["ms"] for k, r in rows.items()) - convs - exchanges["ms"]
            threads = ", ".join(f"{t['thread']} {t['user_ms']:.1f}/{t['system_ms']:.1f}"
                                for t in row["cpu_per_call"]["threads"][:3])
            per = exchanges["ms"] / exchanges["count"] if exchanges["count"] else 0.0
            lines.append(f"{variant:13} {node['node']:4d} {row['wall_ms']:8.1f} "
                         f"{exchanges['ms']:9.1f} {exchanges['count']:3d} {per:7.2f} "
                         f"{convs:7.1f} {other:7.1f} "
                         f"{row['products_during_exchanges_ms']:8.1f} "
                         f"{row['cpu_per_call']['process_ms']:7.1f}  {threads}")
    lines.append("together: ms per call in which a conv or product ran while an exchange was "
                 "in flight")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    apply_xla_flags(args)
    if args.nodes > 1:
        from disco_jax.errors import DiscoError

        try:
            nodes = profile_nodes(args)
        except DiscoError as error:
            print(f"benchmarks.profile: {error}", file=sys.stderr)
            return 2
        report = {"model": args.model, "input_shape": [args.image_size, args.image_size, 3],
                  "batch": args.batch, "repeats": args.repeats,
                  "compute_dtype": args.compute_dtype, "comm_ratio": args.comm_ratio,
                  "xla_flags": os.environ.get("XLA_FLAGS", ""), **nodes}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(node_table(report), flush=True)
        return 0
    forms = single_device_forms(args, None if args.compute_dtype == "float32"
                                else args.compute_dtype)
    report = {"model": args.model, "input_shape": [args.image_size, args.image_size, 3],
              "batch": args.batch, "repeats": args.repeats, "compute_dtype": args.compute_dtype,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "engines": {"disco_jax": profile_xla(args, forms)}}
    if args.compute_dtype == "float32":
        report["engines"]["onnxruntime"] = profile_onnxruntime(args, forms)
    else:
        report["engines"]["onnxruntime"] = {"status": "float32 only"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
