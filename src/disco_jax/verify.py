"""Checking a layer's inference form against its training form and its plan.

:func:`verify_layer` runs one DISCO layer both ways on the same input and
reads what XLA compiled, so that every figure the project reports can be
cross-checked (DESIGN.md section 6): the output difference, the bytes of the
``collective-permute`` ops against the plan's bytes, and XLA's FLOPs against
the accounting formula.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from disco_jax.accounting import (
    Cost,
    hlo_flops,
    hlo_other_collectives,
    hlo_overlap,
    hlo_permute_bytes,
    layer_costs,
)
from disco_jax.layers import _DiscoLinear
from disco_jax.mesh import make_mesh
from disco_jax.parallel import DistributedLayer
from disco_jax.plan import compile_layer


@dataclasses.dataclass(frozen=True)
class LayerCheck:
    """One layer run distributed and on one device, per sample where it says so.

    Attributes:
      name: the layer; k: its budget; batch: the input's batch size.
      max_abs_diff: max |distributed - reference| over the output.
      max_abs_reference: max |reference|, to scale ``max_abs_diff``.
      costs: the plan's per-sample costs (``single``, ``dense_split``, ``disco``).
      hlo_comm_bytes: bytes of the compiled program's collective-permutes, per sample.
      hlo_flops: FLOPs of the compiled per-node program (XLA cost analysis), per sample.
      other_collectives: collectives other than collective-permute in the program.
      overlap: for each collective-permute, the products the program can run
        while it is in flight (:func:`disco_jax.accounting.hlo_overlap`).
    """

    name: str
    k: int
    batch: int
    max_abs_diff: float
    max_abs_reference: float
    costs: dict[str, Cost]
    hlo_comm_bytes: float
    hlo_flops: float
    other_collectives: list[str]
    overlap: list[int]

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.max_abs_reference, np.finfo(np.float32).tiny)


def verify_layer(layer: _DiscoLinear, x: jax.Array, *,
                 name: str | None = None, overlap: bool = False) -> LayerCheck:
    """Runs ``layer`` in both forms on ``x`` and measures the compiled program.

    Arguments:
      layer: a DISCO layer with an exact mask.
      x: a global input, ``f32[B, H, W, C_in]`` or ``f32[B, ..., C_in]``.
      name: the layer's name in the result (default: ``layer.name``).
      overlap: run the inference form overlapped (the product over a node's
        own channels apart from the received ones':
        :class:`~disco_jax.parallel.DistributedLayer`).

    Both forms compute in the layer's compute dtype
    (:func:`disco_jax.set_compute_dtype`) and read what its payload delivers
    (:func:`disco_jax.set_payload_dtype`: the reference quantises as the wire does).
    """
    plan = compile_layer(layer, name)
    reference = layer(x)
    distributed = DistributedLayer(plan, make_mesh(plan.spec.nodes),
                                   compute_dtype=layer.compute_dtype, overlap=overlap)
    compiled = distributed.compile(x)
    out = compiled(*distributed.inputs(x))
    batch = x.shape[0]
    hlo = compiled.as_text()
    return LayerCheck(
        name=plan.name, k=plan.k, batch=batch,
        max_abs_diff=float(jnp.max(jnp.abs(out - reference))),
        max_abs_reference=float(jnp.max(jnp.abs(reference))),
        costs=layer_costs(plan.spec, plan.k, x.shape[1:-1], payload=plan.payload,
                          projected=plan.send_proj is not None),
        hlo_comm_bytes=hlo_permute_bytes(hlo) / batch,
        hlo_flops=hlo_flops(compiled) / batch,
        other_collectives=hlo_other_collectives(hlo),
        overlap=hlo_overlap(hlo),
    )
