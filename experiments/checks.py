"""A mesh check done once, read back while nothing it depends on changes.

A run started again loads its finished variants from their checkpoints
(:func:`experiments.compare.train_variant`); checking each of them on the
mesh again would give the same figures for the same model, plan, test set and
code, at a cost (a ResNet-50 variant: minutes on one core). :func:`kept`
writes each check to ``check.json`` in the variant's (or sweep point's)
folder with one SHA-256 over everything the check depends on:

- the model's whole state (weights, masks, directions, BatchNorm statistics)
  and the plan (:func:`disco_jax.plan.plan_checksum`);
- the test images and targets, the batch, the mesh's size;
- the code: every ``.py`` file of ``disco_jax`` and ``experiments``, and
  jax's version.

It is read back only when that key is equal and it covers what is asked (a
check with the single-device reference serves one without; not the other way
round); anything else checks again and rewrites the file. The check records
when it ran (``checked_at``).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

CHECK = "check.json"


@functools.cache
def code_fingerprint() -> str:
    """SHA-256 over the path and text of every ``.py`` file of ``disco_jax``
    and ``experiments``, and jax's version."""
    import jax

    import disco_jax
    import experiments

    digest = hashlib.sha256(jax.__version__.encode())
    for package in (disco_jax, experiments):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{package.__name__}/{path.relative_to(root)}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _arrays_digest(digest, tree) -> None:
    import jax

    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)  # an Rngs stream's key: its bits
        value = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)} {value.dtype} {value.shape}\n".encode())
        digest.update(value.tobytes())


def check_key(model, plan, split, *, batch: int, nodes: int) -> str:
    """The SHA-256 of everything a mesh check of ``model`` with ``plan`` on
    ``split`` depends on (this module's docstring)."""
    from flax import nnx

    from disco_jax.plan import plan_checksum

    digest = hashlib.sha256(json.dumps(
        {"code": code_fingerprint(), "plan": plan_checksum(plan), "batch": batch,
         "nodes": nodes, "images": len(split)}).encode())
    _arrays_digest(digest, nnx.state(model))
    _arrays_digest(digest, (split.images, split.labels))
    return digest.hexdigest()


def kept(folder: Path | None, key: str, check: Callable[[], dict], *, reference: bool) -> dict:
    """``check()`` (with the single-device ``reference`` or not), or the check
    kept in ``folder/check.json`` under the same ``key`` that covers it (then
    it is not run); a new check is written there."""
    if folder is None:
        return check()
    path = folder / CHECK
    try:
        stored = json.loads(path.read_text())
        if stored["key"] == key and (stored["reference"] or not reference):
            print(f"{folder.name}: the mesh check of {stored['check']['checked_at']} "
                  f"(same model, plan, test set and code) from {path}")
            return stored["check"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from experiments.compare import write_report

    result = check() | {"checked_at": datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds")}
    # written whole or not at all: never read back half-written
    write_report(path, {"key": key, "reference": reference, "check": result})
    return result
