"""Whole-model inference on a mesh, from the same model definition.

A model is written once, as an NNX module whose linear layers are DISCO layers
and whose other layers act per channel (BatchNorm, activations, residual adds,
pooling). :func:`to_inference` turns a trained model and its plan into the
model's *inference form*: the same module tree and the same ``__call__``, with

- every DISCO layer replaced by a :class:`PlannedLinear` (its frozen plan:
  send indices + packed weights; calls :func:`~disco_jax.parallel.node_forward`),
- every ``nnx.BatchNorm`` folded into a per-channel :class:`ChannelAffine`
  (running statistics -> scale and shift),
- every other module that has an ``inference_form(nodes, name)`` method
  replaced by what it returns (:mod:`disco_jax.transformer`: a LayerNorm whose
  statistics come from a ``psum``, per-channel parameters split over nodes),

and every array of it a :class:`PlanArray` whose leading axis is the node.
:class:`DistributedModel` places those arrays so that node n holds only row n
and runs the module inside ``jit(shard_map(...))``: each activation is then
one node's channels, and only the planned channels cross the wire.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from disco_jax.coordination import barrier, share
from disco_jax.errors import ConfigError, PlanError
from disco_jax.layers import _DiscoLinear, compute_dtype_of, disco_layers
from disco_jax.mesh import AXIS, channel_spec, node_spec, replicate, shard_channels, shard_nodes
from disco_jax.parallel import node_forward, plan_payload, split_kernel
from disco_jax.payload import payload_of
from disco_jax.plan import LayerPlan, Plan, check_plan_matches, compile_plan, plan_checksum
from disco_jax.programs import load_or_compile


class PlanArray(nnx.Variable):
    """An array of an inference-form model: leading axis N, one row per node."""


class PlannedLinear(nnx.Module):
    """A DISCO layer in inference form; call it inside ``shard_map`` over ``AXIS``."""

    def __init__(self, plan: LayerPlan, *, payload_dtype=None, compute_dtype=None,
                 overlap: bool = False):
        self.name, self.spec, self.k = plan.name, plan.spec, plan.k
        self.payload_dtype = plan_payload(plan, payload_dtype)
        self.compute_dtype = compute_dtype_of(compute_dtype, plan.name)
        self.send_idx = PlanArray(jnp.asarray(plan.send_idx))
        kernel, received_kernel = split_kernel(plan) if overlap else (plan.kernel, None)
        self.kernel = PlanArray(jnp.asarray(kernel))
        self.received_kernel = (None if received_kernel is None
                                else PlanArray(jnp.asarray(received_kernel)))
        self.bias = None if plan.bias is None else PlanArray(jnp.asarray(plan.bias))
        self.send_proj = (None if plan.send_proj is None
                          else PlanArray(jnp.asarray(plan.send_proj)))

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = None if self.bias is None else self.bias[...]
        send_proj = None if self.send_proj is None else self.send_proj[...]
        received_kernel = None if self.received_kernel is None else self.received_kernel[...]
        return node_forward(self.spec, self.k, x, self.send_idx[...], self.kernel[...], bias,
                            payload_dtype=self.payload_dtype, send_proj=send_proj,
                            compute_dtype=self.compute_dtype,
                            received_kernel=received_kernel)


class ChannelAffine(nnx.Module):
    """``x * scale + shift`` per channel: a BatchNorm with its statistics folded in.

    Arrays are ``f32[N, C/N]``; inside ``shard_map`` a node sees ``[1, C/N]``.
    """

    def __init__(self, batch_norm: nnx.BatchNorm, nodes: int, name: str):
        mean, var = batch_norm.mean[...], batch_norm.var[...]
        channels = mean.shape[-1]
        if channels % nodes:
            raise ConfigError(f"{name}: BatchNorm over {channels} channels does not divide "
                              f"over {nodes} nodes")
        scale = jax.lax.rsqrt(var + batch_norm.epsilon)
        if batch_norm.scale is not None:
            scale = scale * batch_norm.scale[...]
        shift = -mean * scale
        if batch_norm.bias is not None:
            shift = shift + batch_norm.bias[...]
        self.scale = PlanArray(scale.reshape(nodes, -1))
        self.shift = PlanArray(shift.reshape(nodes, -1))

    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1,) * (x.ndim - 1) + (-1,)
        return x * self.scale[...].reshape(shape) + self.shift[...].reshape(shape)


def _replace(root: nnx.Module, path: tuple, new: nnx.Module) -> None:
    parent = root
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def to_inference(model: nnx.Module, plan: Plan | None = None, *,
                 payload_dtype=None, overlap: bool = False) -> nnx.Module:
    """The inference form of ``model`` (a copy; ``model`` is left as it is).

    Arguments:
      model: a trained model whose DISCO layers have exact masks.
      plan: its plan (default: compiled from ``model`` now); checked against it.
      payload_dtype: if given, must be the plan's payload.
      overlap: each DISCO layer computes the product over its node's own
        channels apart from the one over the received channels
        (:func:`~disco_jax.parallel.node_forward`), so that it can run while
        the exchange is in flight; its kernel is then held in those two parts
        (``kernel``, ``received_kernel``). The same sum, the same bytes.

    Each DISCO layer keeps the compute dtype it has in ``model``
    (:func:`disco_jax.set_compute_dtype`) and sends what its plan says
    (``LayerPlan.payload``: the layer's :func:`disco_jax.set_payload_dtype`).

    Raises:
      PlanError: ``plan`` was compiled from another model.
      ConfigError: the model has a layer that cannot be split by channels.
    """
    plan = compile_plan(model) if plan is None else plan
    check_plan_matches(plan, model)
    nodes = plan.nodes
    inference = nnx.clone(model)
    names = {id(layer): name for name, layer in disco_layers(inference).items()}
    replacements = []
    for path, module in nnx.iter_modules(inference):
        name = "/".join(str(p) for p in path)
        if isinstance(module, _DiscoLinear):
            replacements.append((path, PlannedLinear(plan[names[id(module)]],
                                                     payload_dtype=payload_dtype,
                                                     compute_dtype=module.compute_dtype,
                                                     overlap=overlap)))
        elif isinstance(module, nnx.BatchNorm):
            replacements.append((path, ChannelAffine(module, nodes, name)))
        elif hasattr(module, "inference_form"):  # LayerNorm, ChannelParam, ...
            replacements.append((path, module.inference_form(nodes, name or "the model")))
    for path, new in replacements:
        if not path:
            return new
        _replace(inference, path, new)
    for path, module in nnx.iter_modules(inference):
        for attribute, value in vars(module).items():
            if isinstance(value, nnx.Variable) and not isinstance(value, PlanArray):
                raise ConfigError(
                    f"{'/'.join(map(str, path)) or 'the model'} ({type(module).__name__}) holds "
                    f"a {type(value).__name__} '{attribute}' that DISCO cannot split over "
                    "nodes. Use DiscoConv/DiscoDense for linear layers, nnx.BatchNorm, the "
                    "parts of disco_jax.transformer or parameter-free ops for the rest.")
    return inference


class DistributedModel:
    """A model's inference form placed on a mesh: call it on global inputs.

    Arguments:
      model: the trained model (training form).
      mesh: a 1-D mesh over ``AXIS`` with ``plan.nodes`` devices.
      plan: the model's plan (default: compiled from ``model``).
      payload_dtype: if given, must be the plan's payload (what travels is
        part of the plan: :func:`disco_jax.set_payload_dtype`).
      output_rank: rank of the model's output (2 for logits ``[B, classes]``,
        4 for per-pixel outputs), or, for a model that returns several
        arrays (a dict, tuple or list), the same structure of ranks; every
        output is split over nodes on its last axis.
      output_channels: keep only the first this many channels of every
        output (a classifier padded to a multiple of N;
        ``model.num_classes``), or the outputs' structure of such counts
        (None in it: keep all).
      program_cache: a folder that keeps the compiled programs
        (:mod:`disco_jax.programs`): a later run loads them instead of
        compiling (default: compile every time).
      split_input: False (default): the model's input is the network input,
        given to every node whole. True: it is an activation split over
        nodes by channel like any other (a block or a part of a network,
        ``[..., C]`` with C divisible by N).
      overlap: each DISCO layer's product over its node's own channels apart
        from the received ones, to run while the exchange is in flight
        (:func:`to_inference`); the same sum, the same bytes.

    By default the network input is given to every node (replicated); the output comes
    back as one global array. With one process per node
    (:mod:`disco_jax.launch`) every process makes the same calls, and
    :func:`disco_jax.mesh.fetch` gathers the output on the host.
    """

    def __init__(self, model: nnx.Module, mesh: Mesh, plan: Plan | None = None, *,
                 payload_dtype=None, output_rank: int = 2,
                 output_channels: int | None = None, split_input: bool = False,
                 program_cache: str | os.PathLike | None = None, overlap: bool = False):
        plan = compile_plan(model) if plan is None else plan
        _check_mesh(mesh, plan.nodes, "the plan is")
        checksum = plan_checksum(plan) if jax.process_count() > 1 else ""
        graphdef, state = nnx.split(to_inference(model, plan, payload_dtype=payload_dtype,
                                                 overlap=overlap))
        self._setup(graphdef, shard_nodes(state, mesh), mesh, plan.nodes, checksum,
                    plan.payload, output_rank, output_channels, split_input, program_cache)
        self.plan = plan

    @classmethod
    def from_parts(cls, graphdef, state, mesh: Mesh, nodes: int, *, checksum: str,
                   payload_dtype=None, output_rank: int = 2,
                   output_channels: int | None = None, split_input: bool = False,
                   program_cache: str | os.PathLike | None = None) -> DistributedModel:
        """A model from an inference form already split (``nnx.split``) and
        placed on ``mesh`` (each :class:`PlanArray` holding row n on node n),
        whose plan has checksum ``checksum``: what
        :func:`disco_jax.bundle.load_distributed` builds from per-node bundles.
        ``plan`` is then None: no process holds the whole plan."""
        _check_mesh(mesh, nodes, "the bundles are")
        self = cls.__new__(cls)
        self._setup(graphdef, state, mesh, nodes, checksum, payload_dtype, output_rank,
                    output_channels, split_input, program_cache)
        self.plan = None
        return self

    def _setup(self, graphdef, state, mesh, nodes, checksum, payload_dtype, output_rank,
               output_channels, split_input, program_cache):
        for rank in jax.tree.leaves(output_rank):
            if not (isinstance(rank, int) and rank >= 1):
                raise ConfigError(f"output_rank must be a positive int (or a structure of "
                                  f"them, one per output), got {output_rank!r}")
        _check_nodes_agree(checksum, nodes, payload_dtype)
        self.mesh, self.nodes, self.graphdef, self.state = mesh, nodes, graphdef, state

        def body(state, x):
            return nnx.merge(self.graphdef, state)(x)

        self.output_channels, self.split_input = output_channels, split_input
        self.program_cache = program_cache
        self._body, self._output_rank, self._fns, self._compiled = body, output_rank, {}, {}

    def _fn(self, ndim: int):
        if ndim not in self._fns:
            x_spec = channel_spec(ndim) if self.split_input else PartitionSpec()
            self._fns[ndim] = jax.jit(jax.shard_map(
                self._body, mesh=self.mesh, in_specs=(node_spec(), x_spec),
                out_specs=jax.tree.map(channel_spec, self._output_rank)))
        return self._fns[ndim]

    def inputs(self, x: jax.Array) -> tuple:
        """The arguments of the sharded function: the placed arrays and ``x``."""
        if not self.split_input:
            return self.state, replicate(x, self.mesh)
        if np.shape(x)[-1] % self.nodes:
            raise ConfigError(f"the input's {np.shape(x)[-1]} channels (shape "
                              f"{tuple(np.shape(x))}) do not divide over {self.nodes} "
                              "nodes")
        return self.state, shard_channels(x, self.mesh)

    def __call__(self, x: jax.Array) -> jax.Array:
        if jax.process_count() == 1 and self.program_cache is None:
            return self.outputs(self._fn(np.ndim(x))(*self.inputs(x)))
        key = (np.shape(x), jnp.result_type(x).name)  # via compile(): kept, nodes meet
        if key not in self._compiled:
            self._compiled[key] = self.compile(x)
        return self.outputs(self._compiled[key](*self.inputs(x)))

    def outputs(self, y):
        """Drops the padding channels of padded outputs (after the sharded
        program, so that slicing adds no collective to it)."""
        keep = self.output_channels
        if keep is None:
            return y
        if isinstance(keep, int):
            return jax.tree.map(lambda out: out[..., :keep], y)
        return jax.tree.map(lambda count, out: out if count is None else out[..., :count],
                            keep, y, is_leaf=lambda node: node is None)

    def compile(self, x: jax.Array) -> jax.stages.Compiled:
        """The XLA executable for inputs shaped like ``x``; run it as
        ``model.outputs(compiled(*model.inputs(x)))``.

        With one process per node, every node waits here until all have
        compiled (:func:`disco_jax.coordination.barrier`): the program's first
        collective then finds every node ready."""
        compiled = load_or_compile(self._fn(np.ndim(x)).lower(*self.inputs(x)),
                                   self.program_cache, list(self.mesh.devices.flat))
        barrier("a compiled program's first run")
        return compiled


def _check_mesh(mesh: Mesh, nodes: int, what: str) -> None:
    if mesh.shape.get(AXIS) != nodes or len(mesh.shape) != 1:
        raise ConfigError(f"{what} for {nodes} nodes but the mesh is {dict(mesh.shape)}; "
                          f"build it with make_mesh({nodes})")


def _check_nodes_agree(checksum: str, nodes: int, payload_dtype) -> None:
    """One process per node: before anything travels, every node must hold the
    same plan, for the same mesh size and payload dtype."""
    if jax.process_count() == 1:
        return
    payload = payload_dtype if payload_dtype == "mixed" else payload_of(payload_dtype)
    said = share("plan", f"plan {checksum[:16]}, {nodes} nodes, {payload} payloads")
    if len(set(said)) > 1:
        raise PlanError("the nodes do not run the same plan: "
                        + "; ".join(f"node {node} has {value}" for node, value in enumerate(said))
                        + ". Give every node the bundles (or the run) of one plan, exported "
                        "together, and launch as many nodes as the plan has.")

