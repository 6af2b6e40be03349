"""The device mesh: the one place that names the mesh axis.

A DISCO run splits every layer over a 1-D mesh whose single axis is
:data:`AXIS` (``"nodes"``). Node ``n`` owns channels ``[n*C/N, (n+1)*C/N)`` of
every activation, so an activation is sharded on its last (channel) axis and a
per-node array (packed weights, send indices) on its first axis.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from disco_jax.errors import MeshError

AXIS = "nodes"
"""Name of the mesh axis that DISCO splits layers over."""

_COUNT_FLAG = "--xla_force_host_platform_device_count"


def host_device_flags(n: int, flags: str | None = None) -> str:
    """Returns ``XLA_FLAGS`` asking for ``n`` emulated CPU devices.

    Keeps any flag already in ``flags``; a device count already there wins.
    """
    flags = (flags or "").strip()
    if _COUNT_FLAG in flags:
        return flags
    return f"{flags} {_COUNT_FLAG}={n}".strip()


def ensure_host_devices(n: int) -> None:
    """Asks for ``n`` emulated CPU devices, while that can still be changed.

    Call it before the first jax computation (importing jax and disco_jax
    computes nothing). Unless ``XLA_FLAGS`` already holds a device count (which
    wins), it adds ``--xla_force_host_platform_device_count=n`` to
    ``XLA_FLAGS`` and sets ``jax_num_cpu_devices`` to match. Once a
    computation has run the device count is fixed: this does nothing, and
    :func:`make_mesh` says what is missing. Entry points call it first thing so
    that ``--mesh N`` works on a machine with one CPU. In a run of one
    process per node (:mod:`disco_jax.launch`) it does nothing.
    """
    from jax._src import xla_bridge  # no public API tells whether backends exist

    if xla_bridge.backends_are_initialized() or jax.distributed.is_initialized():
        return  # fixed already, or one process per node (disco_jax.launch)
    flags = os.environ.get("XLA_FLAGS", "")
    match = re.search(rf"{_COUNT_FLAG}=(\d+)", flags)
    if match:
        count = int(match.group(1))
    else:
        os.environ["XLA_FLAGS"] = host_device_flags(n, flags)
        count = n
    jax.config.update("jax_num_cpu_devices", count)


FAST_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
"""XLA:CPU flags that make disco_jax's float32 inference programs faster on
CPUs: no YNNPACK fusions (jax 0.10's XLA:CPU fuses whole ResNet stages into
one, and runs ResNet-50's last stage at ~1.4 GFLOP/s there; measured on a
Xeon, one core, 224 px, batch 1: 99 ms with them, 64-66 ms without; batch 8:
601 / 485 ms; the main job's training step 715 / 639 ms). Not for programs
whose products compute in bfloat16: there the fusions are the fast path
(ResNet-50, one core, batch 1: 70 ms with them, 123 ms without, 2026-12-06).
The benchmarks use them for float32 (:func:`use_fast_cpu_flags`); the
experiments do not yet, so that their reported figures stay reproducible."""


def use_fast_cpu_flags(compute_dtype: str | None = None) -> str:
    """Adds :data:`FAST_CPU_FLAGS` to ``XLA_FLAGS`` (a flag already named there
    keeps its value) while that can still change the backend, and returns
    ``XLA_FLAGS``. Processes started afterwards (the nodes of
    :func:`disco_jax.launch.launch_local`) inherit it. For programs computing
    in ``compute_dtype="bfloat16"`` nothing is added (the flags slow them)."""
    from jax._src import xla_bridge  # no public API tells whether backends exist

    flags = os.environ.get("XLA_FLAGS", "").strip()
    if compute_dtype in (None, "float32") and not xla_bridge.backends_are_initialized():
        for flag in FAST_CPU_FLAGS:
            if flag.split("=")[0] not in flags:
                flags = f"{flags} {flag}".strip()
        os.environ["XLA_FLAGS"] = flags
    return flags


def make_mesh(n: int) -> Mesh:
    """Builds the 1-D mesh of ``n`` nodes from the first ``n`` of ``jax.devices()``.

    Devices are taken in ``jax.devices()`` order (not by id), which is also the
    order of processes in a multi-process run.

    Raises:
      MeshError: ``n`` is not positive or the process sees fewer devices.
    """
    if not isinstance(n, int | np.integer) or n < 1:
        raise MeshError(f"mesh size must be a positive integer, got {n!r}")
    devices = jax.devices()
    if len(devices) < n:
        platform = devices[0].platform
        raise MeshError(
            f"a mesh of {n} nodes needs {n} devices, but this process sees "
            f"{len(devices)} {platform} device(s). On CPU, emulate them by setting "
            f"XLA_FLAGS={_COUNT_FLAG}={n} before jax is imported (or call "
            f"disco_jax.ensure_host_devices({n}) first); across machines, run one "
            f"process per node with jax.distributed.initialize."
        )
    return Mesh(np.asarray(devices[:n]), (AXIS,))


def channel_spec(ndim: int) -> PartitionSpec:
    """PartitionSpec of an activation of rank ``ndim``: channels split over nodes."""
    return PartitionSpec(*([None] * (ndim - 1)), AXIS)


def node_spec() -> PartitionSpec:
    """PartitionSpec of a per-node array (leading axis of length N)."""
    return PartitionSpec(AXIS)


def place(x, sharding: NamedSharding):
    """Places the host value ``x`` (an array or a pytree of them, the same in
    every process) with ``sharding``.

    One process: ``jax.device_put``. One process per node: each process puts
    only its own devices' pieces.
    """
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)

    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, x)


def fetch(x: jax.Array) -> np.ndarray:
    """The whole value of ``x`` on the host, gathered from every process if it is spread."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def shard_channels(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Places ``x`` on ``mesh`` with its last axis split over the nodes."""
    return place(x, NamedSharding(mesh, channel_spec(np.ndim(x))))


def shard_nodes(x, mesh: Mesh):
    """Places per-node arrays (a pytree, leading axis N) so that node n holds row n only."""
    return place(x, NamedSharding(mesh, node_spec()))


def replicate(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Places ``x`` whole on every node (the network input)."""
    return place(x, NamedSharding(mesh, PartitionSpec()))
