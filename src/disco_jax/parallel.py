"""The inference form: where a channel crosses the wire.

:func:`node_forward` is the block function one node runs inside
``jax.shard_map`` over the ``nodes`` axis: for each shift s it gathers the k
channels its plan selects and ``ppermute``s them to node ``(n + s) mod N``,
then runs ONE conv/matmul (:func:`disco_jax.layers.linear`) over its own
channels followed by the received ones, with its packed weights. Overlapped
(the packed kernel given in two parts), it runs one product over its own
channels, which reads nothing that travels and so can run while the exchange
is in flight, and adds one product over the received channels.

:class:`DistributedLayer` places a :class:`~disco_jax.plan.LayerPlan` on a
mesh (each node holds only its own packed weights) and wraps that block
function in ``jit(shard_map(...))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from disco_jax.errors import ConfigError, PlanError
from disco_jax.layers import LayerSpec, compute_dtype_of, linear, read_input
from disco_jax.mesh import (
    AXIS,
    channel_spec,
    node_spec,
    replicate,
    shard_channels,
    shard_nodes,
)
from disco_jax.payload import decode, encode, payload_of
from disco_jax.plan import LayerPlan


def shift_permutation(nodes: int, shift: int) -> list[tuple[int, int]]:
    """Source -> destination pairs of one shift: node j sends to (j + shift) mod N."""
    return [(j, (j + shift) % nodes) for j in range(nodes)]


def node_forward(spec: LayerSpec, k: int, x: jax.Array, send_idx: jax.Array,
                 kernel: jax.Array, bias: jax.Array | None, *,
                 payload_dtype: str | None = None,
                 send_proj: jax.Array | None = None,
                 compute_dtype: str | None = None,
                 received_kernel: jax.Array | None = None) -> jax.Array:
    """One node's share of a DISCO layer; call inside ``shard_map`` over ``AXIS``.

    Arguments (local shapes):
      x: ``f32[B, H, W, C_in/N]`` or ``f32[..., C_in/N]``: this node's channels
        (all C_in channels for a layer with a replicated input).
      send_idx: ``int32[1, N-1, k]``: channels this node sends at each shift.
      kernel: ``f32[1, *K, C_in/N + (N-1)*k, C_out/N]``: this node's packed kernel.
      bias: ``f32[1, C_out/N]`` or None.
      payload_dtype: what the sent values travel as (:mod:`disco_jax.payload`,
        a plan's ``payload``; default float32): one message per shift, values
        and scales together.
      send_proj: ``f32[1, N-1, C_in/N, k]`` or None: the directions this node
        sends at each shift (``x @ send_proj``) instead of the channels
        ``send_idx`` names.
      compute_dtype: the dtype of the layer's products (:func:`~disco_jax.layers.linear`).
      received_kernel: ``f32[1, *K, (N-1)*k, C_out/N]`` or None: if given, the
        packed kernel's rows for the received channels, and ``kernel`` its
        rows for this node's own channels (``f32[1, *K, C_in/N, C_out/N]``,
        :func:`split_kernel`): the layer is then computed overlapped, as the
        product over its own channels (independent of the exchange) plus the
        product over the received ones, the same sum.

    Returns:
      ``f32[B, H_out, W_out, C_out/N]`` or ``f32[..., C_out/N]``: this node's outputs.
    """
    payload_dtype = payload_of(payload_dtype, "node_forward")
    x = read_input(spec, x)  # a strided 1x1 conv drops unread pixels before sending
    received = []
    if k > 0:
        for shift in range(1, spec.nodes):
            # Plans hold sorted, unique, in-range indices (LayerPlan checks): "clip"
            # then costs no masking and XLA sees a plain gather.
            if send_proj is None:
                sent = jnp.take(x, send_idx[0, shift - 1], axis=-1,  # [..., k]
                                mode="clip", unique_indices=True, indices_are_sorted=True)
            else:  # k directions: a 1x1 projection on the sender
                sent = jnp.matmul(x, send_proj[0, shift - 1])  # [..., k]
            message = jax.lax.ppermute(encode(payload_dtype, sent), AXIS,
                                       shift_permutation(spec.nodes, shift))
            received.append(decode(payload_dtype, message, sent.shape, x.dtype))
    bias = None if bias is None else bias[0]
    if received_kernel is None:  # one product over the own and the received channels
        x_all = jnp.concatenate([x, *received], axis=-1) if received else x
        return linear(spec, x_all, kernel[0], bias, compute_dtype=compute_dtype)
    y = linear(spec, x, kernel[0], bias, compute_dtype=compute_dtype)  # reads nothing sent
    if received:
        x_received = jnp.concatenate(received, axis=-1) if len(received) > 1 else received[0]
        y = y + linear(spec, x_received, received_kernel[0], None, compute_dtype=compute_dtype)
    return y


def split_kernel(plan: LayerPlan) -> tuple[np.ndarray, np.ndarray | None]:
    """``plan.kernel`` as (own channels' rows, received channels' rows), the
    kernels of :func:`node_forward`'s overlapped form; the second is None where
    nothing is received (k = 0 or one node): the packed kernel is then the own
    part."""
    kernel = np.asarray(plan.kernel)
    received = (plan.spec.nodes - 1) * plan.k
    if received == 0:
        return kernel, None
    own = kernel.shape[-2] - received
    return kernel[..., :own, :], kernel[..., own:, :]


def plan_payload(plan: LayerPlan, payload_dtype=None) -> str:
    """The payload ``plan`` sends; ``payload_dtype``, if given, must be it.

    Raises:
      PlanError: another payload dtype was asked for.
    """
    if payload_dtype is not None and payload_of(payload_dtype, plan.name) != plan.payload:
        raise PlanError(
            f"{plan.name}: the plan sends {plan.payload} payloads, not "
            f"{payload_of(payload_dtype)}; what travels is part of the plan: call "
            f"disco_jax.set_payload_dtype(model, {payload_of(payload_dtype)!r}) on the "
            f"trained model (fine-tune it so it learns to read them) and compile its plan")
    return plan.payload


class DistributedLayer:
    """A layer plan placed on a mesh, callable on global (channel-sharded) arrays.

    Arguments:
      plan: the layer's frozen plan.
      mesh: a 1-D mesh over ``AXIS`` with ``plan.spec.nodes`` devices
        (:func:`disco_jax.make_mesh`).
      payload_dtype: if given, must be the plan's payload (what the channels
        travel as is part of the plan: :func:`disco_jax.set_payload_dtype`).
      compute_dtype: the dtype of the layer's products (default float32;
        :func:`~disco_jax.layers.linear`).
      overlap: compute the product over the node's own channels apart from the
        one over the received channels (:func:`node_forward`), so that it can
        run while the exchange is in flight; the same sum, the same bytes.

    Calling it with ``x: f32[B, H, W, C_in]`` (or ``[..., C_in]``) returns the
    layer's output ``f32[B, H_out, W_out, C_out]`` sharded over channels.
    """

    def __init__(self, plan: LayerPlan, mesh: Mesh, *, payload_dtype=None,
                 compute_dtype=None, overlap: bool = False):
        spec = plan.spec
        if mesh.shape.get(AXIS) != spec.nodes or len(mesh.shape) != 1:
            raise ConfigError(
                f"{plan.name}: the plan is for {spec.nodes} nodes but the mesh is "
                f"{dict(mesh.shape)}; build it with disco_jax.make_mesh({spec.nodes})")
        self.plan, self.mesh = plan, mesh
        self.payload_dtype = plan_payload(plan, payload_dtype)
        self.compute_dtype = compute_dtype_of(compute_dtype, plan.name)
        self.send_idx = shard_nodes(jnp.asarray(plan.send_idx), mesh)
        kernel, received_kernel = split_kernel(plan) if overlap else (plan.kernel, None)
        self.kernel = shard_nodes(jnp.asarray(kernel), mesh)
        self.received_kernel = (None if received_kernel is None
                                else shard_nodes(jnp.asarray(received_kernel), mesh))
        self.bias = None if plan.bias is None else shard_nodes(jnp.asarray(plan.bias), mesh)
        self.send_proj = (None if plan.send_proj is None
                          else shard_nodes(jnp.asarray(plan.send_proj), mesh))
        self._fns = {}

    def _fn(self, ndim: int):
        if ndim not in self._fns:
            def body(x, send_idx, kernel, bias, send_proj, received_kernel):
                return node_forward(self.plan.spec, self.plan.k, x, send_idx, kernel, bias,
                                    payload_dtype=self.payload_dtype, send_proj=send_proj,
                                    compute_dtype=self.compute_dtype,
                                    received_kernel=received_kernel)

            def spec_of(array):
                return node_spec() if array is not None else PartitionSpec()

            x_spec = channel_spec(ndim) if self.plan.spec.split_input else PartitionSpec()
            self._fns[ndim] = jax.jit(jax.shard_map(
                body, mesh=self.mesh,
                in_specs=(x_spec, node_spec(), node_spec(), spec_of(self.bias),
                          spec_of(self.send_proj), spec_of(self.received_kernel)),
                out_specs=channel_spec(ndim)))
        return self._fns[ndim]

    def _check(self, x) -> None:
        spec = self.plan.spec
        rank_ok = np.ndim(x) == 4 if spec.kind == "conv" else np.ndim(x) >= 1
        if not rank_ok or np.shape(x)[-1] != spec.c_in:
            layout = "[B, H, W, C]" if spec.kind == "conv" else "[..., C]"
            raise ConfigError(f"{self.plan.name}: expected input {layout} with "
                              f"C={spec.c_in}, got shape {tuple(np.shape(x))}")

    def inputs(self, x: jax.Array) -> tuple:
        """The arguments of the sharded function: ``x`` split over channels, then
        the placed plan arrays (send indices, packed kernel, bias, projections,
        and the received channels' kernel rows when overlapped)."""
        self._check(x)
        place = shard_channels if self.plan.spec.split_input else replicate
        return (place(x, self.mesh), self.send_idx, self.kernel, self.bias, self.send_proj,
                self.received_kernel)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self._fn(np.ndim(x))(*self.inputs(x))

    def compile(self, x: jax.Array) -> jax.stages.Compiled:
        """The XLA executable for inputs shaped like ``x``, to inspect its HLO and
        costs; run it as ``compiled(*layer.inputs(x))``."""
        return self._fn(np.ndim(x)).lower(*self.inputs(x)).compile()
