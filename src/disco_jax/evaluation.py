"""A model over a dataset on a mesh, checked against one device.

:func:`mesh_outputs` runs a :class:`~disco_jax.DistributedModel` over host
images in batches of one compiled shape (the last batch padded, the padding
dropped); :func:`mesh_check` runs a trained model's inference form on a mesh
over a split, measures the task's metrics from the mesh's outputs and, with
``reference=True``, compares them with the training form on one device (the
masked reference): the predictions that differ (and of those, the float
ties), the largest absolute difference, and the compiled program's bytes,
FLOPs and collectives.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from disco_jax.tasks import Task, as_task


def padded_batches(images: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(images of one batch padded with zeros to batch, how many are real)``."""
    for begin in range(0, len(images), batch):
        chunk = images[begin:begin + batch]
        count = len(chunk)
        if count < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - count, *chunk.shape[1:]),
                                                    chunk.dtype)])
        yield chunk, count


def mesh_outputs(distributed, images: np.ndarray, batch: int) -> np.ndarray:
    """The outputs of ``distributed`` (a :class:`~disco_jax.DistributedModel`)
    on ``images``, gathered on the host (every process, with one process per
    node), in batches of ``batch`` (one compiled program); for a model with
    several outputs, their structure of arrays."""
    import jax
    import jax.numpy as jnp

    from disco_jax.mesh import fetch

    batch = min(batch, len(images))
    compiled = distributed.compile(jnp.zeros((batch, *images.shape[1:]), images.dtype))
    outputs = [jax.tree.map(lambda x, n=count: fetch(x)[:n],
                            distributed.outputs(compiled(*distributed.inputs(chunk))))
               for chunk, count in padded_batches(images, batch)]
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def _host(tree):
    import jax

    return jax.tree.map(np.asarray, tree)


def tie_tolerance(plan) -> float:
    """How far apart (relative to the largest reference output) two outputs
    may be for a prediction that differs between the mesh and the reference
    to count as a float tie: the plan's loosest payload's
    :func:`~disco_jax.payload.reference_tolerance` (1e-4 when every layer
    sends float32; one int8 step, 1/127, when one sends int8: a value on a
    rounding boundary can round apart in the two forms)."""
    from disco_jax.payload import reference_tolerance

    return max((reference_tolerance(layer.payload) for layer in plan.values()),
               default=reference_tolerance("float32"))


def mesh_check(model, plan, mesh, split, task: Task | int, *, batch: int = 500,
               reference: bool = True) -> dict:
    """Runs ``model``'s inference form (``plan``) on ``mesh`` over ``split``.

    Returns:
      ``metrics`` (the task's, from the mesh's outputs), ``images``,
      ``batch``, ``mesh_seconds`` (the mesh's calls, transfers included);
      with ``reference``: ``reference_metrics`` (the training form on one
      device), ``positions`` (predictions compared: images, or pixels),
      ``prediction_mismatches``, ``mismatches_that_are_ties`` (within
      :func:`tie_tolerance` of the plan, ``tie_tolerance``),
      ``max_abs_diff``, ``max_abs_reference``, ``versus_reference`` (the
      task's own measures of the two, :meth:`~disco_jax.tasks.Task.versus_reference`),
      ``hlo_bytes_per_sample``,
      ``hlo_flops_per_sample`` and ``other_collectives`` of the compiled
      program.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import disco_jax as dj

    task = as_task(task)
    tie = tie_tolerance(plan)
    batch = min(batch, len(split))
    distributed = dj.DistributedModel(model, mesh, plan, output_rank=task.output_rank,
                                      output_channels=task.output_channels)
    model.eval()
    reference_fn = nnx.jit(lambda m, x: task.outputs(m(x)))
    compiled = distributed.compile(jnp.asarray(split.images[:batch]))
    total = reference_total = None
    positions = mismatches = ties = 0
    max_diff = max_ref = seconds = 0.0
    for index, (images, count) in enumerate(padded_batches(split.images, batch)):
        targets = split.labels[index * batch:index * batch + count]
        started = time.time()
        outputs = distributed.outputs(compiled(*distributed.inputs(jnp.asarray(images))))
        outputs = jax.tree.map(lambda x, n=count: np.asarray(x)[:n], outputs)
        seconds += time.time() - started
        total = task.combine(total, _host(task.tally(outputs, targets)))
        if not reference:
            continue
        ref = jax.tree.map(lambda x, n=count: np.asarray(x)[:n],
                           reference_fn(model, jnp.asarray(images)))
        reference_total = task.combine(reference_total, _host(task.tally(ref, targets)))
        max_diff = max(max_diff, *(float(np.max(np.abs(a - b))) for a, b
                                   in zip(jax.tree.leaves(outputs), jax.tree.leaves(ref),
                                          strict=True)))
        max_ref = max(max_ref, *(float(np.max(np.abs(r))) for r in jax.tree.leaves(ref)))
        counts = task.agreement(outputs, ref, tie * max(max_ref, 1.0))
        positions, mismatches, ties = (a + b for a, b in
                                       zip((positions, mismatches, ties), counts, strict=True))
    model.train()
    result = {"metrics": task.metrics(total), "images": len(split), "batch": batch,
              "mesh_seconds": round(seconds, 2)}
    if not reference:
        return result
    hlo = compiled.as_text()
    return result | {
        "reference_metrics": task.metrics(reference_total),
        "versus_reference": task.versus_reference(total, reference_total),
        "positions": positions, "prediction_mismatches": mismatches,
        "mismatches_that_are_ties": ties, "tie_tolerance": tie,
        "max_abs_diff": max_diff, "max_abs_reference": max_ref,
        "hlo_bytes_per_sample": dj.hlo_comm_bytes(hlo) / batch,
        "hlo_flops_per_sample": dj.hlo_flops(compiled) / batch,
        "other_collectives": dj.hlo_other_collectives(hlo),
    }
