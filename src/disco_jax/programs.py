"""Compiled programs kept on disk, so that a deployed node does not run XLA's compiler.

Compiling a node's program takes transient memory of the compiler's own, for
a ResNet-50 node more than the node's weights (see ``benchmarks.memory``).
A node that keeps its compiled program (:func:`load_or_compile` with a
folder; ``DistributedModel(..., program_cache=...)``;
``experiments.infer --program-cache``) compiles once, on its first run, and
later runs load the executable (``jax.experimental.serialize_executable``).

An entry is named by the SHA-256 of everything that decides the executable:
the lowered program's text, the jax version, the backend's platform and
version, the process index and count and the devices. The program's
argument and result structures come from the lowering itself. An entry that
cannot be loaded (damaged, or from another build of jaxlib) is compiled
again and replaced.

Loading an executable can run code (jax reads it with an unpickler): keep
the folder the node's own, written only by the node (never copy programs
from elsewhere into it).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax

SUFFIX = ".xla"


def program_key(lowered: jax.stages.Lowered, devices: Sequence | None = None) -> str:
    """The name of ``lowered``'s compiled program (run on ``devices``, default
    all) in a cache folder."""
    backend = jax.devices()[0].client
    devices = jax.devices() if devices is None else devices
    parts = [lowered.as_text(), jax.__version__, backend.platform, backend.platform_version,
             str(jax.process_index()), str(jax.process_count()),
             ",".join(str(device) for device in devices)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def compiled_by_xla(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """``lowered.compile()`` by XLA's compiler, never read from jax's persistent
    compilation cache (``jax_compilation_cache_dir``): an XLA:CPU executable
    read from that cache serializes without its code, and the program kept
    from it fails when run after loading ("NOT_FOUND: Function ... not
    found"; jax 0.10). The cache is turned off for this one compilation and
    on again after it."""
    if jax.config.jax_compilation_cache_dir is None or not jax.config.jax_enable_compilation_cache:
        return lowered.compile()
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # jax decides once whether it uses the cache
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
        compilation_cache.reset_cache()


def load_or_compile(lowered: jax.stages.Lowered, folder: str | os.PathLike | None,
                    devices: Sequence | None = None) -> jax.stages.Compiled:
    """``lowered`` compiled for ``devices`` (in the mesh's order; default all):
    read from ``folder`` if it holds it, else compiled and written there
    (atomically). Without a folder: ``lowered.compile()``."""
    if folder is None:
        return lowered.compile()
    from jax.experimental.serialize_executable import deserialize_and_load, serialize

    folder = Path(folder)
    path = folder / f"{program_key(lowered, devices)}{SUFFIX}"
    if path.is_file():
        try:
            return deserialize_and_load(path.read_bytes(), lowered.in_tree, lowered.out_tree,
                                        execution_devices=devices)
        except Exception:  # noqa: BLE001 - damaged or from another jaxlib: compile again
            pass
    compiled = compiled_by_xla(lowered)
    payload, _, _ = serialize(compiled)
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return compiled
