"""Frozen communication plans: compile, save, load.

A plan is what inference needs and nothing more. Per DISCO layer it holds

- the layer's :class:`~disco_jax.layers.LayerSpec` and its budget k,
- ``send_idx: int32[N, N-1, k]``: the channels node j sends at shift s,
- ``kernel: f32[N, *K, C_in/N + (N-1)*k, C_out/N]``: each node's packed
  weights (its own input channels first, then the channels received at shift
  1, 2, ...); weights that read unsent channels are gone,
- ``bias: f32[N, C_out/N]`` (or None),
- ``send_proj: f32[N, N-1, C_in/N, k]`` (or None): for a layer that sends
  directions rather than channels (a :class:`~disco_jax.layers.CommBasis`),
  the 1 x 1 projection node j applies to its channels before sending at shift
  s; ``send_idx`` then names the directions (the kernel rows they meet),
- ``payload``: what they travel as (:mod:`disco_jax.payload`: ``"float32"``,
  ``"bfloat16"`` or ``"int8"`` with per-channel scales), the layer's
  ``payload_dtype`` when it was compiled.

It is derived from a trained layer by :func:`compile_layer` /
:func:`compile_plan`, never edited by hand. On disk (:func:`save_plan`) a plan
is a folder with ``plan.json`` (readable metadata: specs, k, array shapes and
SHA-256 checksums) and ``arrays/`` (an orbax checkpoint of the arrays).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from disco_jax.errors import ConfigError, PlanError
from disco_jax.layers import LayerSpec, _DiscoLinear, disco_layers
from disco_jax.masks import check_k, mask_to_indices
from disco_jax.payload import payload_of

FORMAT = "disco_jax.plan"
VERSION = 3
"""Version 2 added ``send_proj``, version 3 each layer's ``payload``; older
plans (float32 payloads, no projections) still load."""
READS = (1, 2, 3)
_ARRAYS = ("send_idx", "kernel", "bias", "send_proj")


@dataclasses.dataclass(frozen=True, eq=False)
class LayerPlan:
    """One layer's frozen plan (see the module docstring for the shapes)."""

    name: str
    spec: LayerSpec
    k: int
    send_idx: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray | None
    send_proj: np.ndarray | None = None
    payload: str = "float32"

    def __post_init__(self):
        spec, n = self.spec, self.spec.nodes
        check_k(self.k, spec.group_in, self.name)
        object.__setattr__(self, "payload", payload_of(self.payload, self.name))
        expected = {
            "send_idx": (n, n - 1, self.k),
            "kernel": (n, *spec.packed_kernel_shape(self.k)),
            "bias": (n, spec.group_out) if spec.use_bias else None,
            "send_proj": None if self.send_proj is None else (n, n - 1, spec.group_in, self.k),
        }
        for field, shape in expected.items():
            value = getattr(self, field)
            actual = None if value is None else tuple(value.shape)
            if actual != shape:
                raise PlanError(f"{self.name}: {field} has shape {actual}, the plan of "
                                f"a {spec.describe()} layer with k={self.k} needs {shape}")
        values = isinstance(self.send_idx, np.ndarray)  # not while tracing a plan's shape
        if values and self.send_idx.size and not (0 <= self.send_idx.min() and
                                       self.send_idx.max() < spec.group_in and
                                       np.all(np.diff(self.send_idx, axis=-1) > 0)):
            raise PlanError(f"{self.name}: send indices must be increasing and lie in "
                            f"[0, {spec.group_in}); compile the plan from the layer's mask")

    @property
    def comm_ratio(self) -> float:
        """rho = k / (C_in/N)."""
        return self.k / self.spec.group_in

    def arrays(self) -> dict[str, np.ndarray | None]:
        return {field: getattr(self, field) for field in _ARRAYS}


@dataclasses.dataclass(frozen=True, eq=False)
class Plan(Mapping[str, LayerPlan]):
    """The plans of all DISCO layers of a model, by layer name (``a/b/conv``)."""

    layers: Mapping[str, LayerPlan]

    def __getitem__(self, name: str) -> LayerPlan:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def nodes(self) -> int:
        sizes = {layer.spec.nodes for layer in self.layers.values()}
        if len(sizes) != 1:
            raise PlanError(f"a plan spans one node count, this one has {sorted(sizes)}")
        return sizes.pop()

    @property
    def payload(self) -> str:
        """The payload its layers send (:mod:`disco_jax.payload`), or
        ``"mixed"`` when they differ."""
        kinds = {layer.payload for layer in self.layers.values() if layer.spec.split_input}
        return kinds.pop() if len(kinds) == 1 else ("float32" if not kinds else "mixed")


def pack_kernel(spec: LayerSpec, kernel: np.ndarray, send_idx: np.ndarray) -> np.ndarray:
    """Each node's packed kernel from the whole kernel and the send indices.

    Node i's input rows are its own channels, then for s = 1..N-1 the k
    channels that sender ``j = (i - s) mod N`` sends at shift s.

    Arguments:
      kernel: ``[*K, C_in, C_out]``; send_idx: ``int[N, N-1, k]``.

    Returns:
      ``[N, *K, C_in/N + (N-1)*k, C_out/N]``.
    """
    n, g_in, g_out = spec.nodes, spec.group_in, spec.group_out
    kernel = np.asarray(kernel)
    packed = []
    for i in range(n):
        columns = kernel[..., i * g_out:(i + 1) * g_out]
        if not spec.split_input:  # every node reads the whole (replicated) input
            packed.append(columns)
            continue
        rows = [columns[..., i * g_in:(i + 1) * g_in, :]]
        for s in range(1, n):
            j = (i - s) % n
            rows.append(np.take(columns, j * g_in + send_idx[j, s - 1], axis=-2))
        packed.append(np.concatenate(rows, axis=-2))
    return np.stack(packed)


def compile_layer(layer: _DiscoLinear, name: str | None = None) -> LayerPlan:
    """Freezes a trained DISCO layer (weights + exact mask) into its plan.

    Raises:
      ConfigError: the mask is not exact (binary, same k for every pair).
    """
    name = name or layer.name
    spec = layer.spec
    n = spec.nodes
    if spec.split_input:
        k, send_idx = mask_to_indices(layer.mask[...], name)
    else:  # the replicated input: nothing is sent
        k, send_idx = 0, np.zeros((n, n - 1, 0), np.int32)
    bias = None
    if spec.use_bias:
        bias = np.asarray(layer.bias[...]).reshape(n, spec.group_out)
    send_proj = None
    if spec.split_input and layer.basis is not None:  # directions: sender j projects
        basis = np.asarray(layer.basis[...])
        send_proj = np.zeros((n, n - 1, spec.group_in, k), np.float32)
        for j in range(n):
            for s in range(1, n):
                send_proj[j, s - 1] = basis[(j + s) % n, j][:, send_idx[j, s - 1]]
    return LayerPlan(name, spec, k, send_idx,
                     pack_kernel(spec, np.asarray(layer.kernel[...]), send_idx), bias,
                     send_proj, layer.payload_dtype)


def compile_plan(model: nnx.Module) -> Plan:
    """Compiles every DISCO layer of ``model`` (or one layer) into a :class:`Plan`."""
    layers = disco_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no DISCO layers to compile")
    return Plan({name: compile_layer(layer, name) for name, layer in layers.items()})


def check_plan_matches(plan: Plan, model: nnx.Module) -> None:
    """Raises PlanError naming the first layer where ``plan`` and ``model`` disagree."""
    layers = disco_layers(model)
    missing = sorted(set(layers) - set(plan))
    extra = sorted(set(plan) - set(layers))
    if missing or extra:
        raise PlanError(
            f"the plan does not fit {type(model).__name__}: layers without a plan "
            f"{missing[:5]}, plan entries without a layer {extra[:5]}. Was the plan "
            "compiled from another model?")
    for name, layer in layers.items():
        if plan[name].spec != layer.spec:
            raise PlanError(
                f"layer {name}: the model has a {layer.spec.describe()} layer ({layer.spec}), "
                f"the plan was compiled for a {plan[name].spec.describe()} layer "
                f"({plan[name].spec}). Compile a plan from this model, or build the model "
                "with the plan's shapes and node count.")
        if payload_sent(plan[name]) != payload_sent(layer):
            raise PlanError(
                f"layer {name}: the plan sends {plan[name].payload} payloads, the model's "
                f"layer reads {layer.payload_dtype} ones. Call "
                f"disco_jax.set_payload_dtype(model, {plan[name].payload!r}) before using "
                f"this plan (and fine-tune with it), or compile a plan from the model.")


def payload_sent(layer) -> str:
    """What a layer or layer plan sends; a layer on the replicated input sends
    nothing, so its payload is moot (``"float32"``)."""
    if not layer.spec.split_input:
        return "float32"
    return layer.payload if isinstance(layer, LayerPlan) else layer.payload_dtype


def array_checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), as plans and bundles record it."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def plan_checksum(plan: Plan) -> str:
    """The plan's identity: SHA-256 over every layer's name, spec, k and arrays.

    Two plans with the same checksum send the same channels and hold the same
    weights; nodes compare it before they exchange anything.
    """
    entries = [{"name": name, "spec": dataclasses.asdict(layer.spec), "k": layer.k,
                "arrays": {field: None if value is None else
                           [list(value.shape), str(value.dtype), array_checksum(value)]
                           for field, value in layer.arrays().items()}}
               | ({} if layer.payload == "float32" else {"payload": layer.payload})
               for name, layer in plan.items()]
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` to write into; renamed to ``path``
    (replacing it) when the block ends, removed if it raises: an interrupted
    write leaves nothing half-written at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_plan(plan: Plan, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes ``plan`` to the folder ``path`` (plan.json + arrays/), atomically.

    The plan is written to a temporary folder beside ``path`` and renamed into
    place, so an interrupted save leaves nothing half-written at ``path``.

    Raises:
      PlanError: ``path`` exists and ``overwrite`` is False.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise PlanError(f"{path} already exists; pass overwrite=True to replace it")
    with atomic_folder(path) as tmp:
        entries, tree = [], {}
        for index, (name, layer) in enumerate(plan.items()):
            key = f"layer_{index:04d}"
            arrays = {}
            for field, value in layer.arrays().items():
                if value is None:
                    continue
                arrays[field] = {"shape": list(value.shape), "dtype": str(value.dtype),
                                 "sha256": array_checksum(value)}
                if value.size:  # orbax refuses zero-size arrays; the shape says it all
                    tree.setdefault(key, {})[field] = np.asarray(value)
            entries.append({"name": name, "key": key, "k": layer.k, "payload": layer.payload,
                            "spec": dataclasses.asdict(layer.spec), "arrays": arrays})
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / "arrays", tree)
        meta = {"format": FORMAT, "version": VERSION, "nodes": plan.nodes, "layers": entries}
        (tmp / "plan.json").write_text(json.dumps(meta, indent=1))
    return path


def load_plan(path: str | os.PathLike, model: nnx.Module | None = None) -> Plan:
    """Reads a plan written by :func:`save_plan`, checking it as it goes.

    Arguments:
      path: the plan folder.
      model: if given, the plan must fit it layer by layer (names and shapes).

    Raises:
      PlanError: the folder or a file is missing, a file is corrupted (bad JSON,
        unreadable arrays, checksum mismatch), or the plan does not fit ``model``.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    meta_file = path / "plan.json"
    if not meta_file.is_file():
        raise PlanError(f"no plan at {path}: {meta_file.name} is missing. Compile one with "
                        "disco_jax.compile_plan(model) and write it with save_plan.")
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
        if meta.get("version") not in READS:
            raise ValueError(f"version {meta.get('version')!r}; this disco_jax reads "
                             f"versions {', '.join(map(str, READS))}")
        entries = meta["layers"]
        specs = {e["name"]: LayerSpec(**e["spec"]) for e in entries}
    except (ValueError, KeyError, TypeError) as err:
        raise PlanError(f"{meta_file} is corrupted or not a disco_jax plan: {err}") from None

    tree = {}
    if any(a["shape"] and np.prod(a["shape"]) for e in entries for a in e["arrays"].values()):
        if not (path / "arrays").is_dir():
            raise PlanError(f"the arrays of the plan at {path} cannot be read: the folder "
                            "arrays/ is missing; compile and save the plan again")
        try:
            with ocp.StandardCheckpointer() as checkpointer:
                tree = checkpointer.restore(path / "arrays")
        except Exception as err:  # orbax/tensorstore raise many kinds
            raise PlanError(f"the arrays of the plan at {path} cannot be read "
                            f"({type(err).__name__}: {str(err)[:200]}); the plan folder is "
                            "corrupted or incomplete: compile and save it again") from None

    layers = {}
    for entry in entries:
        name, arrays = entry["name"], {}
        for field in _ARRAYS:
            info = entry["arrays"].get(field)
            if info is None:
                arrays[field] = None
                continue
            shape, dtype = tuple(info["shape"]), np.dtype(info["dtype"])
            value = tree.get(entry["key"], {}).get(field)
            if value is None:
                if np.prod(shape):
                    raise PlanError(f"layer {name}: {field} is missing from {path / 'arrays'}")
                value = np.zeros(shape, dtype)
            value = np.asarray(value)
            if (value.shape != shape or value.dtype != dtype
                    or array_checksum(value) != info["sha256"]):
                raise PlanError(f"layer {name}: {field} in {path} does not match its checksum "
                                "(the file was changed or damaged); compile and save the plan "
                                "again")
            arrays[field] = value
        try:
            layers[name] = LayerPlan(name, specs[name], int(entry["k"]), **arrays,
                                     payload=entry.get("payload", "float32"))
        except ConfigError as err:
            raise PlanError(f"{meta_file} is corrupted or not a disco_jax plan: {err}") from None
    plan = Plan(layers)
    if model is not None:
        check_plan_matches(plan, model)
    return plan
