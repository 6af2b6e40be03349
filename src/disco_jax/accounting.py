"""What a layer costs: communication, FLOPs and weights, from the plan and from XLA.

Per sample and per layer (DESIGN.md section 4), with P the pixels (or tokens)
the layer reads and k the plan's budget:

    values sent, DISCO       = N * (N-1) * k * P
    values sent, dense split = N * (N-1) * (C_in/N) * P
    FLOPs on one node        = 2 * taps * (C_out/N) * (C_in/N + (N-1)*k) + bias adds
    weights on one node      = K*K * (C_out/N) * (C_in/N + (N-1)*k) + C_out/N

A layer that sends directions (a plan with ``send_proj``) adds, on the
sender, its 1 x 1 projections: ``2 * P * (C_in/N) * (N-1)*k`` FLOPs and
``(C_in/N) * (N-1)*k`` weights per node.

``taps`` counts, over all output pixels, the kernel taps that land inside the
input; away from the borders that is H_out * W_out * K*K, the design's
formula, and it is what XLA's cost analysis counts, so the two can be checked
against each other. A strided 1 x 1 conv reads (and sends) only the pixels it
uses, P = H_out * W_out, in DISCO and in the dense split alike.

Parts other than DISCO layers (LayerNorm statistics, attention, per-channel
parameters; :mod:`disco_jax.transformer`) add their own costs through a
``costs`` method. The measured side reads the compiled executable: bytes of
its ``collective-permute`` ops (:func:`hlo_permute_bytes`) and of its
``all-reduce`` ops (LayerNorm statistics; :func:`hlo_comm_bytes` counts both)
and FLOPs from ``cost_analysis()`` (:func:`hlo_flops`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disco_jax.layers import LayerSpec, _DiscoLinear, disco_layers, record_inputs
from disco_jax.payload import message_bytes, payload_of
from disco_jax.plan import Plan, compile_plan


@dataclasses.dataclass(frozen=True)
class Cost:
    """One variant of one layer, per sample.

    Attributes:
      comm_values: values sent between nodes, all ordered pairs together.
      comm_bytes: the bytes that carry them (:func:`disco_jax.payload.message_bytes`:
        values in the payload dtype, plus int8 payloads' scales).
      flops: FLOPs on one node.
      params: weights (and biases) stored on one node.
    """

    comm_values: int
    comm_bytes: int
    flops: int
    params: int


def _pads(size: int, kernel: int, stride: int, padding) -> tuple[int, int]:
    """(output size, low padding) of one spatial axis."""
    if padding == "SAME":
        out = -(-size // stride)
        return out, max((out - 1) * stride + kernel - size, 0) // 2
    low = 0 if padding == "VALID" else int(padding)
    return (size + 2 * low - kernel) // stride + 1, low


def valid_taps(size: int, kernel: int, stride: int, padding) -> int:
    """Kernel taps inside the input, summed over the output positions of one axis."""
    out, low = _pads(size, kernel, stride, padding)
    starts = np.arange(max(out, 0)) * stride - low
    taps = np.clip(starts + kernel, 0, size) - np.clip(starts, 0, size)
    return int(taps.sum())


def read_spatial(spec: LayerSpec, in_spatial: Sequence[int]) -> tuple[int, ...]:
    """Spatial shape of what the layer reads (and sends)."""
    if spec.subsamples_input:
        return tuple(-(-d // spec.stride) for d in in_spatial)
    return tuple(in_spatial)


def out_spatial(spec: LayerSpec, in_spatial: Sequence[int]) -> tuple[int, ...]:
    """Spatial shape of the layer's output (tokens pass through a dense layer)."""
    if spec.kind == "dense":
        return tuple(in_spatial)
    return tuple(_pads(d, spec.kernel, spec.stride, spec.padding)[0] for d in in_spatial)


def _taps(spec: LayerSpec, in_spatial: Sequence[int]) -> int:
    if spec.kind == "dense":
        return math.prod(in_spatial)
    if spec.subsamples_input:
        return math.prod(read_spatial(spec, in_spatial))
    return math.prod(valid_taps(d, spec.kernel, spec.stride, spec.padding)
                     for d in in_spatial)


def _variant(spec: LayerSpec, in_spatial, width: int, sent_per_pair: int, c_out: int,
             payload: str) -> Cost:
    """Cost of a node computing ``c_out`` outputs from ``width`` input channels."""
    kernel_area = spec.kernel ** 2 if spec.kind == "conv" else 1
    outputs = math.prod(out_spatial(spec, in_spatial)) * c_out
    bias = outputs if spec.use_bias else 0
    if not spec.split_input:  # the replicated network input is reported apart
        sent_per_pair = 0
    pairs, read = spec.nodes * (spec.nodes - 1), read_spatial(spec, in_spatial)
    return Cost(
        comm_values=pairs * sent_per_pair * math.prod(read),
        comm_bytes=pairs * message_bytes(payload, sent_per_pair, read),
        flops=2 * _taps(spec, in_spatial) * c_out * width + bias,
        params=kernel_area * width * c_out + (c_out if spec.use_bias else 0),
    )


def layer_costs(spec: LayerSpec, k: int, in_spatial: Sequence[int], *,
                payload: str = "float32", projected: bool = False,
                split_payload: str = "float32") -> dict[str, Cost]:
    """Per-sample costs of one layer as ``{"single", "dense_split", "disco"}``.

    Arguments:
      spec: the layer; k: the plan's channels (or directions) per node pair.
      in_spatial: the input's spatial shape, ``(H, W)`` for a conv, the token
        shape (``()`` for ``[B, C]``) for a dense layer.
      payload: what DISCO's values travel as (:data:`disco_jax.payload.PAYLOADS`).
      split_payload: what the dense split's travel as (float32: the paper's).
      projected: the layer sends directions (its plan has ``send_proj``): the
        sender's projections are added to DISCO's FLOPs and weights.
    """
    n, g_in, g_out = spec.nodes, spec.group_in, spec.group_out
    payload, split_payload = payload_of(payload), payload_of(split_payload)
    disco = _variant(spec, in_spatial, g_in + (n - 1) * k, k, g_out, payload)
    if projected and spec.split_input:
        sent = (n - 1) * k * g_in
        disco = dataclasses.replace(
            disco, flops=disco.flops + 2 * math.prod(read_spatial(spec, in_spatial)) * sent,
            params=disco.params + sent)
    return {
        "single": _variant(dataclasses.replace(spec, nodes=1), in_spatial, spec.c_in, 0,
                           spec.c_out, payload),
        "dense_split": _variant(spec, in_spatial, spec.c_in, g_in, g_out, split_payload),
        "disco": disco,
    }


VARIANTS = ("single", "dense_split", "disco")


def node_variants(nodes: int, *, comm_values: int = 0, flops: int = 0,
                  params: int = 0) -> dict[str, Cost]:
    """Costs of a part that is not a DISCO layer and is split evenly over nodes
    (a LayerNorm, attention by heads, a per-channel parameter), as
    ``{"single", "dense_split", "disco"}``.

    Arguments:
      comm_values: float32 values all nodes send per sample (the same with
        or without DISCO masks; none on a single device).
      flops, params: of the whole part; a node of a split model has 1/N.
    """
    split = Cost(comm_values, 4 * comm_values, flops // nodes, params // nodes)
    return {"single": Cost(0, 0, flops, params), "dense_split": split, "disco": split}


@dataclasses.dataclass(frozen=True)
class ModelCosts:
    """Per-sample costs of a whole model.

    Attributes:
      layers: per DISCO layer (by name), its costs and input shape.
      others: per other part that costs something (LayerNorm statistics,
        attention, per-channel parameters; by name), its costs and input shape.
      totals: per variant, the sum over both, plus the folded BatchNorm
        scale/shift (2 per channel) in ``params``. FLOPs leave out the
        per-channel ops (normalisation, activations, softmax, adds, pooling).
    """

    layers: dict[str, dict]
    totals: dict[str, Cost]
    others: dict[str, dict] = dataclasses.field(default_factory=dict)

    @property
    def comm_reduction(self) -> float | None:
        """Dense-split bytes / DISCO bytes (None when DISCO sends nothing)."""
        disco = self.totals["disco"].comm_bytes
        return self.totals["dense_split"].comm_bytes / disco if disco else None


def _module_names(model: nnx.Module) -> dict[int, str]:
    names = {id(module): "/".join(str(p) for p in path)
             for path, module in nnx.iter_modules(model)}
    names.update({id(layer): name for name, layer in disco_layers(model).items()})
    return names


def layer_input_shapes(model: nnx.Module, input_shape: Sequence[int]) -> dict[str, tuple]:
    """The input shape of every DISCO layer (and other module that records
    one) of ``model`` for a given model input, by path name (traced
    abstractly, nothing is computed)."""
    graphdef, state = nnx.split(model)
    shapes: dict[str, tuple] = {}

    def run(state, x):
        module = nnx.merge(graphdef, state)
        names = _module_names(module)
        with record_inputs() as seen:
            out = module(x)
        shapes.update({names[key]: tuple(value.shape) for key, value in seen.items()})
        return out

    jax.eval_shape(run, state, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    return shapes


def model_costs(model: nnx.Module, input_shape: Sequence[int],
                plan: Plan | None = None) -> ModelCosts:
    """Per-sample costs of every DISCO layer of ``model`` and their totals.

    Arguments:
      model: the model (training form); input_shape: its input, batch first.
      plan: its plan (default: compiled from ``model``); each layer's bytes
        are in its plan's payload, the dense split's in float32, the other
        parts' (LayerNorm statistics, float32 sums) in float32.
    """
    plan = compile_plan(model) if plan is None else plan
    shapes = layer_input_shapes(model, input_shape)
    layers = {}
    for name, layer in plan.items():
        if name not in shapes:
            raise ValueError(f"layer {name} is not called by the model's forward pass")
        costs = layer_costs(layer.spec, layer.k, shapes[name][1:-1], payload=layer.payload,
                            projected=layer.send_proj is not None)
        layers[name] = {"input_shape": shapes[name][1:], "k": layer.k, **costs}
    norm_channels = sum(module.mean.shape[-1] for _, module in nnx.iter_modules(model)
                        if isinstance(module, nnx.BatchNorm))
    nodes = plan.nodes
    others = {}
    for path, module in nnx.iter_modules(model):
        if hasattr(module, "costs") and not isinstance(module, _DiscoLinear):
            name = "/".join(str(p) for p in path)
            shape = shapes.get(name, (None,))[1:]  # a parameter has no input
            others[name] = {"input_shape": shape,
                            **module.costs(shape, nodes)}
    parts = [*layers.values(), *others.values()]
    totals = {}
    for variant in VARIANTS:
        per_node = 1 if variant == "single" else nodes
        totals[variant] = Cost(
            comm_values=sum(entry[variant].comm_values for entry in parts),
            comm_bytes=sum(entry[variant].comm_bytes for entry in parts),
            flops=sum(entry[variant].flops for entry in parts),
            params=sum(entry[variant].params for entry in parts)
            + 2 * norm_channels // per_node)
    return ModelCosts(layers, totals, others)


_DTYPE_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s64": 8, "s32": 4, "u32": 4,
                "s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1, "f8e4m3fn": 1, "f8e5m2": 1}
_PERMUTE = re.compile(
    r"=\s*\(?(?P<dtype>[a-z0-9]+)\[(?P<dims>[0-9,]*)\][^=]*?\s"
    r"collective-permute(?:-start)?\(.*?source_target_pairs=\{(?P<pairs>[0-9{},]*)\}")
_ALL_REDUCE = re.compile(
    r"=\s*\(?(?P<dtype>[a-z0-9]+)\[(?P<dims>[0-9,]*)\][^=]*?\sall-reduce(?:-start)?\("
    r".*?replica_groups=(?P<groups>\{[0-9{},]*\}|\[[0-9,]+\]<=\[[0-9,]+\])")
_COLLECTIVE = re.compile(r"\s(all-gather|all-to-all|reduce-scatter|collective-broadcast)"
                         r"(?:-start)?\(")


def hlo_permute_bytes(hlo_text: str) -> int:
    """Bytes all nodes send through ``collective-permute`` ops in compiled HLO.

    The compiled module is one node's program: each op's shape is what one
    sender sends, and its ``source_target_pairs`` says how many senders there
    are. Returns the sum over ops of bytes x pairs (per batch, not per sample).
    """
    total = 0
    for match in _PERMUTE.finditer(hlo_text):
        dims = [int(d) for d in match["dims"].split(",") if d]
        pairs = match["pairs"].count("{")
        total += math.prod(dims) * _DTYPE_BYTES[match["dtype"]] * pairs
    return total


def _group_sizes(groups: str) -> list[int]:
    """Sizes of the replica groups ``{{0,1},{2,3}}`` or ``[G,S]<=[N]`` (iota form)."""
    if groups.startswith("["):
        count, size = (int(d) for d in groups[1:groups.index("]")].split(","))
        return [size] * count
    return [len([d for d in group.split(",") if d]) for group in re.findall(r"\{([0-9,]*)\}",
                                                                            groups[1:-1])]


def hlo_all_reduce_bytes(hlo_text: str) -> int:
    """Bytes all nodes send through ``all-reduce`` ops in compiled HLO, counted as
    the plan counts a ``psum`` (LayerNorm statistics): every node's partial
    values reach every other node of its group, bytes x S x (S-1) per group of S."""
    total = 0
    for match in _ALL_REDUCE.finditer(hlo_text):
        dims = [int(d) for d in match["dims"].split(",") if d]
        size = math.prod(dims) * _DTYPE_BYTES[match["dtype"]]
        total += sum(size * s * (s - 1) for s in _group_sizes(match["groups"]))
    return total


def hlo_comm_bytes(hlo_text: str) -> int:
    """All bytes between nodes in compiled HLO: collective-permutes (the DISCO
    layers) and all-reduces (LayerNorm statistics), per batch."""
    return hlo_permute_bytes(hlo_text) + hlo_all_reduce_bytes(hlo_text)


def hlo_other_collectives(hlo_text: str) -> list[str]:
    """Names of collective ops in compiled HLO other than those
    :func:`hlo_comm_bytes` counts (collective-permute, all-reduce)."""
    return [m.group(1) for m in _COLLECTIVE.finditer(hlo_text)]


_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = [^%]*?\s?"
                          r"(?P<op>[a-z][a-z0-9\-]*)\((?P<operands>[^)]*)\)(?P<rest>.*)$")
_PRODUCTS = ("convolution", "dot")


def _hlo_computations(hlo_text: str) -> tuple[str, dict[str, list[dict]]]:
    """The entry computation's name and every computation's instructions
    (name, op, operand names, called computations), from HLO text."""
    computations, entry, current = {}, None, None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header["name"], [])
            entry = header["name"] if line.startswith("ENTRY") else entry
            continue
        instruction = _INSTRUCTION.match(line) if current is not None else None
        if instruction:
            current.append({"name": instruction["name"], "op": instruction["op"],
                            "operands": re.findall(r"%([\w.\-]+)", instruction["operands"]),
                            "calls": re.findall(r"(?:calls|to_apply)=%([\w.\-]+)",
                                                instruction["rest"])})
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    return entry, computations


def hlo_overlap(hlo_text: str) -> list[int]:
    """For each ``collective-permute`` of compiled HLO (in program order), the
    number of products (convolutions and dots, also inside fusions) that
    neither feed it nor read what it delivers: work the program can run while
    that exchange is in flight. An overlapped DISCO layer
    (:func:`disco_jax.to_inference` with ``overlap=True``) has at least one
    such product per exchange, its product over its own channels; a layer
    computed as one product over its own and the received channels has none
    (a model may still have others: a residual block's shortcut). Whether the
    backend does run them at once is up to its runtime: XLA:CPU (jax 0.10)
    runs no product while a collective-permute runs (``python -m
    benchmarks.profile --nodes 2 --overlap`` measures it); XLA:GPU splits the
    permute into an asynchronous start/done pair to schedule work between."""
    entry, computations = _hlo_computations(hlo_text)

    def has_product(name, seen=()):
        return any(i["op"] in _PRODUCTS or any(c not in seen and has_product(c, (*seen, c))
                                               for c in i["calls"])
                   for i in computations.get(name, []))

    instructions = computations[entry]
    reads = {i["name"]: set(i["operands"]) for i in instructions}
    read_by = {name: set() for name in reads}
    for name, operands in reads.items():
        for operand in operands & read_by.keys():
            read_by[operand].add(name)

    def reach(start, edges):
        seen, stack = set(), [start]
        while stack:
            for other in edges.get(stack.pop(), ()):
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        return seen

    products = {i["name"] for i in instructions
                if i["op"] in _PRODUCTS or any(has_product(c) for c in i["calls"])}
    return [len(products - reach(i["name"], reads) - reach(i["name"], read_by))
            for i in instructions if i["op"] in ("collective-permute", "collective-permute-start")]


def hlo_flops(compiled) -> float:
    """FLOPs of one node's compiled program (XLA's ``cost_analysis()``), per batch."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))
