"""One OS process per node, over jax's own distributed runtime.

    python -m disco_jax.launch --nodes 2 -- experiments.infer --run runs/resnet50-n2
    python -m disco_jax.launch --nodes 2 --cpus 0,1 -- disco_jax.linkcheck

    # across machines: the same command on each machine i = 0 .. N-1
    python -m disco_jax.launch --nodes 2 --coordinator 10.0.0.1:7700 --process-id i \\
        -- experiments.infer --run runs/resnet50-n2

Without ``--coordinator`` the launcher starts N local processes (nodes) that
meet at a free port on 127.0.0.1, prefixes each line they print with
``[node i]``, and watches them. With ``--coordinator HOST:PORT`` and
``--process-id I`` this process is node I of a run across machines (node 0
hosts the coordinator at that address).

A node calls ``jax.distributed.initialize``, owns one device (one CPU device;
on GPUs the one that ``CUDA_VISIBLE_DEVICES`` leaves it), and runs the module
as ``__main__``. :func:`disco_jax.make_mesh` then builds the mesh from all
processes' devices, in process order, and the same jitted ``shard_map``
functions as on an emulated mesh run unchanged: jax's runtime carries the
bytes (CPU collectives over gloo, NCCL on GPUs).

Before the first collective of each compiled program the nodes meet at a
barrier of jax's coordination service
(:func:`disco_jax.coordination.barrier`, waiting up to
``--barrier-timeout`` seconds), so that a node that compiles or loads more
slowly does not run out gloo's own 30 s wait for the others; and the nodes
check that they run the same plan on the same mesh
(:func:`disco_jax.coordination.share`) before
anything travels.

Node 0 binds the coordinator to the address given, not to every interface.
Nothing authenticates a node: whoever reaches the coordinator's port and the
gloo ports can join or disturb a run. Run across machines on a trusted
network or through a tunnel (WireGuard, an SSH tunnel).

Faults end in bounded time: a collective whose peer has gone fails at once
("connection closed by peer"), and the coordination service declares a node
dead after ``--heartbeat-timeout`` seconds without a heartbeat; a node then
stops with an error that says so. A node that cannot reach the coordinator
gives up after ``--connect-timeout`` seconds. The local launcher exits
non-zero naming the first node that failed, and stops the rest if they have
not stopped by themselves ``--grace`` seconds later.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

from disco_jax.coordination import TIMEOUT_S, TIMEOUT_VARIABLE, first_line

HEARTBEAT_TIMEOUT_S = 10
CONNECT_TIMEOUT_S = 60
BARRIER_TIMEOUT_S = TIMEOUT_S
"""Seconds a node waits for the others before a program's first collective
(``--barrier-timeout``; :func:`disco_jax.coordination.barrier`)."""
LINK_FAILURE = 3
"""A node's exit code when a collective failed because another node is gone."""

_DEVICE_COUNT_FLAG = re.compile(r"--xla_force_host_platform_device_count=\d+")


class NodeFailure(RuntimeError):
    """A node of a launched run stopped with an error (the message names it)."""


def initialize(coordinator: str, nodes: int, process_id: int, *,
               heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S,
               connect_timeout: int = CONNECT_TIMEOUT_S) -> None:
    """Makes this process node ``process_id`` of ``nodes``, with one device.

    Call it before any jax computation. Emulated host devices asked for in
    ``XLA_FLAGS`` are dropped: here a node is a process.

    If not every node has joined after ``connect_timeout`` seconds, the
    process prints why and exits with code 2 (jax itself would abort it).

    Raises:
      MeshError: the coordinator refused this node, or the process sees other
        than one local device.
    """
    import jax

    from disco_jax.errors import MeshError

    os.environ["XLA_FLAGS"] = _DEVICE_COUNT_FLAG.sub("", os.environ.get("XLA_FLAGS", "")).strip()
    jax.config.update("jax_num_cpu_devices", 1)
    advice = (f"Check that node 0 is running, that {coordinator} is its address and "
              "reachable from here, and that every node was given the same --nodes.")

    def give_up():  # jax aborts the process with a runtime log when it times out itself
        print(f"node {process_id}: error: not every one of the {nodes} nodes joined the run at "
              f"{coordinator} within {connect_timeout} s. {advice}", file=sys.stderr, flush=True)
        os._exit(2)

    watchdog = threading.Timer(connect_timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(coordinator, nodes, process_id,
                                   coordinator_bind_address=coordinator,  # not [::]
                                   initialization_timeout=connect_timeout + 60,
                                   heartbeat_timeout_seconds=heartbeat_timeout,
                                   shutdown_timeout_seconds=max(heartbeat_timeout, 10))
    except Exception as err:  # jax raises its runtime's own error types here
        raise MeshError(f"node {process_id} of {nodes} could not join the run at "
                        f"{coordinator} ({first_line(err)}). {advice}") from None
    finally:
        watchdog.cancel()
    local = jax.local_devices()
    if len(local) != 1:
        raise MeshError(f"node {process_id} sees {len(local)} local devices ({local}); a node "
                        "must own exactly one. On GPUs, give each process one device with "
                        "CUDA_VISIBLE_DEVICES.")


def _is_link_failure(err: BaseException) -> bool:
    text = str(err)
    return any(marker in text for marker in ("Gloo", "gloo", "NCCL", "Connection closed",
                                             "Connection reset", "heartbeat", "DEADLINE"))


def run_node(coordinator: str, nodes: int, process_id: int, module: str, argv: list[str], *,
             heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S,
             connect_timeout: int = CONNECT_TIMEOUT_S,
             barrier_timeout: float = BARRIER_TIMEOUT_S) -> int:
    """Runs ``module`` as ``__main__`` on node ``process_id``; returns its exit code.

    A failed collective (another node gone) or a DISCO error ends the process
    at once with a one-line message: waiting in jax's shutdown barrier for a
    node that is gone would only add a stack of runtime logs.
    """
    from disco_jax.errors import DiscoError

    os.environ[TIMEOUT_VARIABLE] = str(barrier_timeout)
    label = f"node {process_id}"
    try:
        initialize(coordinator, nodes, process_id, heartbeat_timeout=heartbeat_timeout,
                   connect_timeout=connect_timeout)
    except DiscoError as err:
        print(f"{label}: error: {err}", file=sys.stderr, flush=True)
        return 2
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except DiscoError as err:
        print(f"{label}: error: {err}", file=sys.stderr, flush=True)
        code = 2
    except Exception as err:  # noqa: BLE001 - anything else: say which node, then stop
        if _is_link_failure(err):
            hint = ""
            if "connecting" in str(err) or "failed to connect" in str(err):
                hint = (" gloo connects to the address each machine's hostname resolves to: "
                        "check that `getent hosts $(hostname)` gives an address the other "
                        "nodes reach, not 127.0.x.x.")
            print(f"{label}: error: a collective with another node failed ({first_line(err)}); "
                  f"another node has stopped or cannot be reached.{hint} Stopping.",
                  file=sys.stderr, flush=True)
            code = LINK_FAILURE
        else:
            traceback.print_exc()
            print(f"{label}: error: {module} raised {first_line(err)}", file=sys.stderr,
                  flush=True)
            code = 1
    if code == 0:
        import jax

        jax.distributed.shutdown()
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip the shutdown barrier: the other nodes may be gone


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    if code == LINK_FAILURE:
        return f"stopped (code {code}): it lost its link to another node"
    return f"exited with code {code}"


def _relay(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, b""):
        out.write(prefix + line.decode(errors="replace"))
        out.flush()
    stream.close()


def launch_local(nodes: int, module: str, argv: list[str], *, cpus: list[int] | None = None,
                 prefix: list[str] | None = None, address: str = "127.0.0.1",
                 heartbeat_timeout: int = HEARTBEAT_TIMEOUT_S,
                 connect_timeout: int = CONNECT_TIMEOUT_S,
                 barrier_timeout: float = BARRIER_TIMEOUT_S, grace: float | None = None,
                 env: dict | None = None, out=None) -> list[int]:
    """Starts ``nodes`` local node processes running ``module argv`` and waits for them.

    Arguments:
      cpus: pin node i to CPU ``cpus[i]`` (``len(cpus) == nodes``).
      prefix: a command each node runs under (such as ``["ip", "netns",
        "exec", "disco"]``).
      address: where node 0 hosts the coordinator (127.0.0.1 by default).
      barrier_timeout: seconds a node waits for the others before a program's first
        collective (:func:`disco_jax.coordination.barrier`).
      grace: seconds the other nodes get to stop by themselves once one has
        failed (default: the heartbeat timeout + 20 s); then they are killed.
      env: extra environment variables for the nodes.
      out: where the nodes' prefixed output goes (default ``sys.stdout``).

    Returns:
      the nodes' exit codes (negative: killed by that signal).

    Raises:
      NodeFailure: a node failed; the message names it and how.
    """
    from disco_jax.errors import ConfigError

    if nodes < 1:
        raise ConfigError(f"--nodes must be a positive number of processes, got {nodes}")
    if cpus is not None and len(cpus) != nodes:
        raise ConfigError(f"--cpus gives {len(cpus)} CPUs ({cpus}) for {nodes} nodes; give one "
                          "per node")
    out = sys.stdout if out is None else out
    grace = heartbeat_timeout + 20 if grace is None else grace
    coordinator = f"{address}:{_free_port()}"
    environment = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    procs, relays = [], []
    try:
        for node in range(nodes):
            command = [*(prefix or []), sys.executable, "-m", "disco_jax.launch",
                       "--nodes", str(nodes), "--coordinator", coordinator,
                       "--process-id", str(node), "--heartbeat-timeout", str(heartbeat_timeout),
                       "--connect-timeout", str(connect_timeout),
                       "--barrier-timeout", str(barrier_timeout), "--", module, *argv]
            if cpus is not None:
                command = ["taskset", "-c", str(cpus[node]), *command]
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=environment, start_new_session=True)
            procs.append(proc)
            relay = threading.Thread(target=_relay, args=(proc.stdout, f"[node {node}] ", out),
                                     daemon=True)
            relay.start()
            relays.append(relay)
        out.write(f"disco_jax.launch: {nodes} nodes, coordinator {coordinator}, pids "
                  + " ".join(str(p.pid) for p in procs) + "\n")
        out.flush()
        failed_order, deadline = [], None
        while [p.poll() for p in procs].count(None):  # poll every node, every time
            failed_order += [i for i, p in enumerate(procs)
                             if p.returncode not in (None, 0) and i not in failed_order]
            if failed_order and deadline is None:
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for proc in procs:  # interrupted, or past the grace period: stop what is left
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()
        for relay in relays:
            relay.join(timeout=5)
    codes = [p.returncode for p in procs]
    failed_order += [i for i, c in enumerate(codes) if c != 0 and i not in failed_order]
    if failed_order:
        # the cause: the first node that failed other than by losing a peer (code 3)
        failed = min(failed_order, key=lambda i: (codes[i] == LINK_FAILURE, failed_order.index(i)))
        others = ", ".join(f"node {i} {_describe(c)}" for i, c in enumerate(codes)
                           if i != failed)
        raise NodeFailure(f"node {failed} {_describe(codes[failed])}"
                          + (f"; then {others}" if others else ""))
    return codes


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m disco_jax.launch", description=__doc__.split("\n\n")[0],
        usage="python -m disco_jax.launch --nodes N [--coordinator HOST:PORT --process-id I] "
              "[options] -- MODULE [ARGS ...]")
    parser.add_argument("--nodes", type=int, required=True, help="processes = nodes N")
    parser.add_argument("--coordinator", help="HOST:PORT of node 0; with --process-id, this "
                                              "process is one node of a run across machines")
    parser.add_argument("--process-id", type=int, help="this node's index, 0 .. N-1")
    parser.add_argument("--cpus", help="local runs: pin node i to the i-th of these CPUs, "
                                       "e.g. 0,1")
    parser.add_argument("--heartbeat-timeout", type=int, default=HEARTBEAT_TIMEOUT_S,
                        help=f"seconds without a heartbeat before a node counts as dead "
                             f"(default {HEARTBEAT_TIMEOUT_S})")
    parser.add_argument("--connect-timeout", type=int, default=CONNECT_TIMEOUT_S,
                        help=f"seconds to wait for every node to join "
                             f"(default {CONNECT_TIMEOUT_S})")
    parser.add_argument("--barrier-timeout", type=float, default=BARRIER_TIMEOUT_S,
                        help=f"seconds a node waits for the others before a program's first "
                             f"collective (default {BARRIER_TIMEOUT_S})")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the module to run and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the module to run after --, e.g. -- experiments.infer --run DIR")
    args.module, args.argv = command[0], command[1:]
    if args.nodes < 1:
        parser.error(f"--nodes must be a positive number of processes, got {args.nodes}")
    if args.barrier_timeout <= 0:
        parser.error(f"--barrier-timeout must be positive seconds, got {args.barrier_timeout:g}")
    if (args.coordinator is None) != (args.process_id is None):
        parser.error("--coordinator and --process-id go together (one node of a run across "
                     "machines); give neither to start all nodes here")
    if args.process_id is not None and not 0 <= args.process_id < args.nodes:
        parser.error(f"--process-id must be in 0 .. {args.nodes - 1}, got {args.process_id}")
    try:
        args.cpus = None if args.cpus is None else [int(c) for c in args.cpus.split(",")]
    except ValueError:
        parser.error(f"--cpus takes comma-separated CPU numbers, got {args.cpus!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.coordinator is not None:
        return run_node(args.coordinator, args.nodes, args.process_id, args.module, args.argv,
                        heartbeat_timeout=args.heartbeat_timeout,
                        connect_timeout=args.connect_timeout,
                        barrier_timeout=args.barrier_timeout)
    from disco_jax.errors import DiscoError

    try:
        launch_local(args.nodes, args.module, args.argv, cpus=args.cpus,
                     heartbeat_timeout=args.heartbeat_timeout,
                     connect_timeout=args.connect_timeout,
                     barrier_timeout=args.barrier_timeout)
    except NodeFailure as err:
        print(f"disco_jax.launch: {err}", file=sys.stderr)
        return 1
    except DiscoError as err:
        print(f"disco_jax.launch: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
