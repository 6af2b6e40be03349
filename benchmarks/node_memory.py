"""One node's side of the memory benchmark: what a node process holds, from the OS.

Run by :mod:`benchmarks.memory` through the launcher, one process per node:

    python -m disco_jax.launch --nodes 2 -- benchmarks.node_memory --bundles DIR --out OUT
    python -m disco_jax.launch --nodes 2 -- benchmarks.node_memory --runtime-only --out OUT

Each node reads its own bundle (``DIR/node-i``, :mod:`disco_jax.bundle`),
builds the network's inference form from the bundle's settings without making
any other weights, runs it on a batch of zeros (compiles, then runs again),
and writes ``OUT/node{i}.json``: the bytes of its weights on disk
(``weights.npz``) and on its device (the arrays it placed), the device's own
count where the backend keeps one, and the process's resident memory from
``/proc/self/status`` (VmHWM: the peak; VmRSS: now) at each step.
``--runtime-only`` does the same with no model (a 4-byte exchange and the
input placed): the memory of the runtime itself, so that a node's share can be
told from it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.node_memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, help="the bundles' folder (node-i inside)")
    parser.add_argument("--runtime-only", action="store_true",
                        help="no model: the runtime's own memory")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--program-cache", type=Path,
                        help="keep the compiled program here; a later run loads it")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if (args.bundles is not None) == args.runtime_only:
        parser.error("give --bundles DIR or --runtime-only (one of them)")
    return args


def resident() -> dict:
    """This process's peak and current resident memory (bytes), from /proc."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024
    return {"peak": fields["VmHWM"], "now": fields["VmRSS"]}


def build_network(settings: dict):
    """The untrained network of a benchmark bundle's settings."""
    from flax import nnx

    from disco_jax.models import NETWORKS

    return NETWORKS[settings["model"]](classes=settings["classes"], nodes=settings["nodes"],
                                       in_channels=3, stem="imagenet", rngs=nnx.Rngs(0))


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    import disco_jax as dj
    from disco_jax import bundle, linkcheck

    steps = {"started": resident()}
    node, nodes = jax.process_index(), jax.process_count()
    mesh = dj.make_mesh(nodes)
    shape = (args.batch, args.image_size, args.image_size, 3)
    record = {"node": node, "nodes": nodes, "batch": args.batch,
              "input_shape": list(shape[1:])}
    if args.runtime_only:
        linkcheck.measure(mesh, 4, 1)
        jax.block_until_ready(dj.mesh.replicate(jnp.zeros(shape, jnp.float32), mesh))
        steps["ran"] = resident()
    else:
        folder = bundle.node_folder(args.bundles, node)
        settings = bundle.read_manifest(folder)["settings"]
        distributed = bundle.load_distributed(args.bundles, mesh,
                                              lambda: build_network(settings),
                                              output_channels=settings["classes"],
                                              program_cache=args.program_cache)
        steps["loaded"] = resident()
        x = jnp.zeros(shape, jnp.float32)
        compiled = distributed.compile(x)
        steps["compiled"] = resident()
        for _ in range(2):
            jax.block_until_ready(compiled(*distributed.inputs(x)))
        steps["ran"] = resident()
        mine = [shard.data for leaf in jax.tree.leaves(distributed.state)
                for shard in leaf.addressable_shards]
        record |= {"model": settings["model"], "variant": settings["variant"],
                   "weights_disk_bytes": (folder / bundle.WEIGHTS).stat().st_size,
                   "weights_device_bytes": int(sum(array.nbytes for array in mine))}
        stats = jax.local_devices()[0].memory_stats()  # None on CPU
        record["device_bytes_in_use"] = None if not stats else stats.get("bytes_in_use")
    record["resident"] = steps
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"node{node}.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
