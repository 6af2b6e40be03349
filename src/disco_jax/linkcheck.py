"""Measures the links between nodes with the collective DISCO layers use.

    python -m disco_jax.launch --nodes 2 -- disco_jax.linkcheck
    python -m disco_jax.launch --nodes 2 -- disco_jax.linkcheck --seconds 600   # a soak

Every node sends a payload to the next node on the ring (``ppermute`` inside
``shard_map``, as a DISCO layer does) and the median time of one exchange is
printed per payload size: the smallest size gives the per-message latency,
the largest the bandwidth a node gets while all nodes send at once. Node 0
prints. In one process (``--mesh N``) it runs on emulated devices, which only
checks that the path works.
"""

from __future__ import annotations

import argparse
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m disco_jax.linkcheck",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4,65536,4194304",
                        help="payload bytes per node per exchange, comma-separated")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="then keep exchanging the largest payload this long")
    parser.add_argument("--mesh", type=int, default=2,
                        help="emulated nodes when run as one process (default 2)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes comma-separated byte counts, got {args.sizes!r}")
    if any(s < 4 for s in args.sizes) or args.repeats < 1:
        parser.error("--sizes must be at least 4 bytes each and --repeats at least 1")
    return args


def exchange_fn(mesh):
    """``jit(shard_map)``: each node sends its ``f32[1, n]`` row to the next node."""
    import jax
    from jax.sharding import PartitionSpec

    from disco_jax.mesh import AXIS

    nodes = mesh.shape[AXIS]
    ring = [(i, (i + 1) % nodes) for i in range(nodes)]
    return jax.jit(jax.shard_map(lambda x: jax.lax.ppermute(x, AXIS, ring), mesh=mesh,
                                 in_specs=PartitionSpec(AXIS), out_specs=PartitionSpec(AXIS)))


def measure(mesh, size: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` exchanges of ``size`` bytes per node."""
    import numpy as np

    from disco_jax.coordination import barrier
    from disco_jax.mesh import AXIS, shard_nodes

    x = shard_nodes(np.ones((mesh.shape[AXIS], max(size // 4, 1)), np.float32), mesh)
    fn = exchange_fn(mesh).lower(x).compile()
    barrier("link check")  # every node compiled: the first exchange finds them all
    x = fn(x).block_until_ready()  # connect
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        x = fn(x).block_until_ready()
        times.append(time.perf_counter() - begin)
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    import disco_jax as dj
    from disco_jax.coordination import share
    from disco_jax.mesh import shard_nodes

    dj.ensure_host_devices(args.mesh)
    nodes = jax.device_count() if jax.process_count() > 1 else args.mesh
    mesh = dj.make_mesh(nodes)
    talk = jax.process_index() == 0
    if talk:
        print(f"{nodes} nodes, {jax.process_count()} process(es), {jax.devices()[0].platform}; "
              "median of one ring exchange (every node sends to the next)", flush=True)
    medians = {}
    for size in args.sizes:
        times = measure(mesh, size, args.repeats)
        median = medians[size] = float(np.median(times))
        if talk:
            print(f"  {size:>12,} B per node   {1e3 * median:9.3f} ms   "
                  f"{size / median / 1e6:9.2f} MB/s per node   "
                  f"(min {1e3 * min(times):.3f}, max {1e3 * max(times):.3f} ms)", flush=True)
    if args.seconds > 0:
        x = shard_nodes(np.ones((nodes, max(args.sizes) // 4), np.float32), mesh)
        fn = exchange_fn(mesh).lower(x).compile()
        # every node must make the same number of exchanges: node 0's count, from its timing
        rounds = max(1, int(args.seconds / medians[max(args.sizes)]))
        rounds = int(share("soak rounds", str(rounds))[0])
        began = time.monotonic()
        for done in range(1, rounds + 1):
            x = fn(x).block_until_ready()
            if talk and done % 100 == 0:
                print(f"  {done} exchanges", flush=True)
        if talk:
            print(f"  soak: {rounds} exchanges in {time.monotonic() - began:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
