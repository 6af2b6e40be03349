"""One node's side of the network benchmark: inference latency per link rate.

Run by :mod:`benchmarks.network` through the launcher, one process per node:

    python -m disco_jax.launch --nodes 2 --cpus 0,1 -- benchmarks.latency \\
        --model resnet50 --batches 1,8 --rates unlimited --out /tmp/latency.json

Every node builds the same network (random weights: latency does not depend on
what the weights learned) in two forms, the dense split (every channel
travels, float32) and DISCO (random exact masks at ``--comm-ratio``; or, with
``--budgets PLAN``, a trained plan's k per layer, each read in k random
directions as the trained model sends directions: its exchanges are the
plan's, layers that send nothing exchange nothing), DISCO
once per payload of ``--payloads`` (``disco`` sends float32, ``disco_int8``
the same channels as int8 with their scales, ...), compiles them all as
:class:`disco_jax.DistributedModel` programs for each batch size, and times
them: one warm-up run, then ``--repeats`` timed runs, wall time on node 0
from the call to the output being ready. Node 0 also times, at each rate, a
4-byte exchange (per-message latency) and a 1 MB exchange (bandwidth). The
single-node rows are :mod:`benchmarks.single`'s.
With ``--shape-link``, node 0 sets the rate of the loopback it shares with
the other nodes (``tc``) before each rate's runs: the nodes must run in a
network namespace of their own (:mod:`benchmarks.network` makes one).
Node 0 writes the timings to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.latency",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--comm-ratio", type=float, default=0.2)
    parser.add_argument("--budgets", type=Path,
                        help="a trained model's report (JSON) or plan folder: DISCO sends "
                             "its k per layer instead of --comm-ratio's")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="what the nodes' products compute in")
    parser.add_argument("--payloads", default="float32",
                        help="what DISCO's channels travel as, one DISCO program each "
                             "(comma-separated: float32, bfloat16, int8)")
    parser.add_argument("--overlap", action="store_true",
                        help="one more program: DISCO (float32) with every layer overlapped "
                             "(its own channels' product apart from the received ones', "
                             "disco_jax.to_inference(overlap=True)), named disco_overlap")
    parser.add_argument("--rates", default="unlimited",
                        help="tc rates (100mbit, 1gbit, ...) or unlimited, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape-link", action="store_true",
                        help="node 0 sets each rate on the loopback with tc (needs root, "
                             "inside a network namespace)")
    parser.add_argument("--mesh", type=int, default=2, help="emulated nodes in one process")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.rates = args.rates.split(",")
    args.payloads = parse_payloads(parser, args.payloads)
    return args


def parse_payloads(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """``--payloads``: comma-separated names of :data:`disco_jax.payload.PAYLOADS`."""
    from disco_jax.payload import PAYLOADS

    payloads = text.split(",")
    if not payloads or any(p not in PAYLOADS for p in payloads) or len(set(payloads)) < len(
            payloads):
        parser.error(f"--payloads takes distinct names among {', '.join(PAYLOADS)}, got {text!r}")
    return payloads


OVERLAPPED = "disco_overlap"  # the float32 DISCO program, every layer overlapped


def disco_variant(payload: str) -> str:
    """The name of DISCO's program with ``payload``: ``disco`` (float32), ``disco_int8``, ..."""
    return "disco" if payload == "float32" else f"disco_{payload}"


def rate_bits(rate: str) -> float | None:
    """Bits per second of a tc rate such as ``100mbit`` (None for ``unlimited``)."""
    if rate == "unlimited":
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(k|m|g)?bit", rate)
    if not match:
        raise ValueError(f"a link rate is like 100mbit, 1gbit or unlimited, got {rate!r}")
    return float(match.group(1)) * {None: 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]


def shape_loopback(rate: str) -> None:
    """Sets the loopback of this network namespace to ``rate`` (a tbf qdisc, MTU 1500)."""
    subprocess.run(["ip", "link", "set", "lo", "mtu", "1500", "up"], check=True)
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True)
    bits = rate_bits(rate)
    if bits is not None:
        burst = max(64 * 1024, int(bits / 8 / 250))  # >= one timer tick of data at 250 Hz
        subprocess.run(["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate,
                        "burst", str(burst), "latency", "100ms"], check=True)


def plan_budgets(path: Path, model) -> dict[str, int]:
    """``{layer name: k}`` of a trained model, for ``model``: from a run's
    report (its ``layers``, e.g. ``results/resnet50_n2_int8_r01_fisher.json``)
    or its plan folder. Every layer of ``model`` that reads the other nodes'
    channels must be there with the same nodes and input channels (the outputs
    may differ: the benchmark's classifier has 1000 classes, a trained model's
    its dataset's).

    Raises:
      ConfigError: the budgets are of another network or node count (names the
        layer), or ``path`` is a JSON file that is not a run's report.
      PlanError: ``path`` is a folder that holds no readable plan.
    """
    from disco_jax import load_plan
    from disco_jax.errors import ConfigError
    from disco_jax.layers import disco_layers

    if path.suffix == ".json":
        try:
            report = json.loads(path.read_text())
            layers = {entry["name"]: (entry["k"], report["nodes"], entry["input_shape"][-1])
                      for entry in report["layers"]}
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            raise ConfigError(f"--budgets {path}: not a run's report with its layers' k "
                              f"({type(err).__name__}: {err}); pass a report an experiment "
                              "wrote, or a plan folder") from None
    else:
        layers = {name: (layer.k, layer.spec.nodes, layer.spec.c_in)
                  for name, layer in load_plan(path).items()}
    budgets = {}
    for name, layer in sorted(disco_layers(model).items()):
        spec = layer.spec
        if not spec.split_input:
            continue
        if name not in layers:
            raise ConfigError(f"--budgets {path}: it has no layer {name}; it is of another "
                              f"network (its layers: {', '.join(list(layers)[:3])}, ...)")
        k, nodes, c_in = layers[name]
        if (nodes, c_in) != (spec.nodes, spec.c_in):
            raise ConfigError(f"--budgets {path}: {name} reads {c_in} channels over {nodes} "
                              f"nodes there, {spec.c_in} over {spec.nodes} here: pass the "
                              "budgets of this network and node count")
        budgets[name] = k
    return budgets


def set_budgets(model, budgets: dict[str, int], seed: int = 1) -> None:
    """Every layer of ``budgets`` reads its k random directions of the other
    nodes' channels (:func:`disco_jax.projections.random_directions`): the
    trained model's exchanges and send projections, random weights."""
    import numpy as np

    from disco_jax.layers import disco_layers
    from disco_jax.projections import random_directions

    choose = random_directions(budgets, seed)
    rows = np.random.default_rng(seed)
    for name, layer in sorted(disco_layers(model).items()):
        if name in budgets:  # the input only scales the directions
            choose(name, layer, rows.standard_normal((64, layer.spec.c_in)), None)


def timed(fn, repeats: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - begin))
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "max_ms": max(times), "times_ms": times}


def compile_variants(args, nodes: int, mesh):
    """The dense split and DISCO (random exact masks at ``args.comm_ratio``, or
    ``args.budgets``'s k per layer in random directions; one program per payload
    of ``args.payloads``, default float32: :func:`disco_variant`) of
    ``args.model`` (random weights), and with ``args.overlap`` the float32
    DISCO program overlapped (:data:`OVERLAPPED`), compiled for every batch:
    returns ``(programs, costs)`` with ``programs[variant, batch] = (compiled,
    inputs, {"messages", "messages_with_work_beside", "hlo_bytes"})`` (the
    second: exchanges with a product beside them, :func:`disco_jax.hlo_overlap`)
    and ``costs[variant]`` the plan's per-node cost."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import disco_jax as dj
    from disco_jax import sparsify
    from disco_jax.models import NETWORKS

    shape = (args.image_size, args.image_size, 3)
    model = NETWORKS[args.model](classes=args.classes, nodes=nodes, in_channels=3,
                                 stem="imagenet", rngs=nnx.Rngs(0))
    sparsify.FixedMask("dense_split").update(model, 0)
    model.eval()
    dj.set_compute_dtype(model, args.compute_dtype)
    forms = {"dense_split": model}
    path = getattr(args, "budgets", None)
    budgets = None if path is None else plan_budgets(path, model)
    for payload in getattr(args, "payloads", ["float32"]):
        forms[disco_variant(payload)] = disco = nnx.clone(model)
        if budgets is None:
            dj.set_random_masks(disco, jax.random.key(1), args.comm_ratio)  # the same masks
        else:
            set_budgets(disco, budgets)  # the same directions
        dj.set_payload_dtype(disco, payload)
    if getattr(args, "overlap", False):
        forms[OVERLAPPED] = forms["disco"]
    programs, costs, plans = {}, {}, {}
    for variant, form in forms.items():
        if variant == OVERLAPPED:  # DISCO's plan, computed overlapped
            plan = plans["disco"]
        else:
            plan = plans[variant] = dj.compile_plan(form)
        distributed = dj.DistributedModel(form, mesh, plan, output_channels=args.classes,
                                          overlap=variant == OVERLAPPED)
        costs[variant] = dj.model_costs(form, (1, *shape), plan).totals[
            "dense_split" if variant == "dense_split" else "disco"]
        for batch in args.batches:
            x = jnp.zeros((batch, *shape), jnp.float32)
            compiled = distributed.compile(x)
            inputs = distributed.inputs(x)
            hlo = compiled.as_text()
            programs[variant, batch] = (compiled, inputs, {
                "messages": len(re.findall(r"collective-permute(?:-start)?\(", hlo)),
                "messages_with_work_beside": sum(1 for n in dj.hlo_overlap(hlo) if n),
                "hlo_bytes": dj.hlo_permute_bytes(hlo)})
    return programs, costs


def run(args) -> dict:
    import jax
    import numpy as np

    import disco_jax as dj
    from disco_jax import linkcheck

    nodes = jax.device_count() if jax.process_count() > 1 else args.mesh
    mesh = dj.make_mesh(nodes)
    lead = jax.process_index() == 0
    shape = (args.image_size, args.image_size, 3)
    programs, costs = compile_variants(args, nodes, mesh)
    links = []
    for rate in args.rates:
        if args.shape_link and lead:
            shape_loopback(rate)
        # every node meets here before timing (a collective), after node 0 set the rate
        small = linkcheck.measure(mesh, 4, 20)
        large = linkcheck.measure(mesh, 1 << 20, 5)
        entry = {"rate": rate, "per_message_ms": 1e3 * float(np.median(small)),
                 "exchange_1mb_ms": 1e3 * float(np.median(large)), "results": {}}
        for (variant, batch), (compiled, inputs, _) in programs.items():
            entry["results"][f"{variant}/{batch}"] = timed(
                lambda c=compiled, i=inputs: jax.block_until_ready(c(*i)), args.repeats)
        links.append(entry)
        if lead:
            print(f"rate {rate}: " + ", ".join(f"{k} {v['median_ms']:.1f} ms"
                                               for k, v in entry["results"].items()), flush=True)
    if args.shape_link and lead:
        shape_loopback("unlimited")
    return {
        "model": args.model, "nodes": nodes, "processes": jax.process_count(),
        "input_shape": list(shape), "classes": args.classes, "comm_ratio": args.comm_ratio,
        "budgets": None if args.budgets is None else str(args.budgets),
        "compute_dtype": args.compute_dtype, "payloads": args.payloads,
        "overlap": args.overlap,
        "batches": args.batches, "repeats": args.repeats,
        "comm_bytes_per_image": {v: c.comm_bytes for v, c in costs.items()},
        "flops_per_node_per_image": {v: c.flops for v, c in costs.items()},
        "programs": {f"{v}/{b}": info for (v, b), (_, _, info) in programs.items()},
        "links": links, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__, "platform": jax.devices()[0].platform,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    import disco_jax as dj

    dj.ensure_host_devices(args.mesh)
    report = run(args)
    if jax.process_index() == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
