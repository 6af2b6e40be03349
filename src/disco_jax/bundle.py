"""Per-node deployment bundles: each node's part of a planned model, alone on disk.

    from disco_jax import bundle
    bundle.export_bundles(model, plan, "bundles/run", settings=settings)  # where it was trained
    distributed = bundle.load_distributed("bundles/run", mesh, build)    # on every node

:func:`export_bundles` writes one folder per node, ``node-0`` .. ``node-{N-1}``,
each holding what that node needs and nothing of the other nodes' weights:

- ``weights.npz``: the node's row of every array of the model's inference
  form (:func:`~disco_jax.inference.to_inference`): its packed kernels, send
  indices and send projections, its folded BatchNorms and LayerNorm
  parameters, keyed by their path in the module tree
  (``blocks/0/conv1/kernel``);
- ``manifest.json``: which node it is, the mesh size, the payload dtype, the
  plan's checksum (:func:`~disco_jax.plan.plan_checksum`, the same in every
  node's bundle), the layers' specs and budgets k (from which the inference
  form's structure is rebuilt without any weights), each array's shape, dtype
  and SHA-256, and ``settings``: whatever the caller needs to build the
  untrained network again (the experiments store the run's ``settings.json``).

:func:`load_distributed` rebuilds the inference form's structure from
``build`` (a function that returns the untrained network) under
:func:`flax.nnx.eval_shape`, so no weights are made; it reads only the
bundles of the nodes whose devices this process owns (its own one, with one
process per node), checks them, places each row on its node and returns a
:class:`~disco_jax.DistributedModel`. With one process per node the nodes
compare plan checksums, mesh size and payload dtype before anything travels
(:func:`disco_jax.coordination.share`).

The weights are plain ``.npz`` (read with numpy alone, checked against the
manifest's SHA-256), so that a node needs neither orbax nor the training run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from disco_jax.errors import DiscoError, PlanError
from disco_jax.inference import DistributedModel, to_inference
from disco_jax.layers import LayerSpec, disco_layers, set_compute_dtype
from disco_jax.mesh import AXIS, node_spec
from disco_jax.payload import payload_of
from disco_jax.plan import LayerPlan, Plan, array_checksum, atomic_folder, plan_checksum

FORMAT = "disco_jax.bundle"
VERSION = 1
MANIFEST, WEIGHTS = "manifest.json", "weights.npz"
_FIELDS = ("send_idx", "kernel", "bias", "send_proj")


def node_folder(root: str | os.PathLike, node: int) -> Path:
    """The folder of node ``node``'s bundle under ``root``."""
    return Path(root) / f"node-{node}"


def _leaf_name(path) -> str:
    return "/".join(str(key.key) for key in path if isinstance(key, jax.tree_util.DictKey))


def _layer_entries(plan: Plan) -> list[dict]:
    return [{"name": name, "spec": dataclasses.asdict(layer.spec), "k": layer.k,
             "payload": layer.payload,
             "arrays": {field: None if value is None else [list(value.shape), str(value.dtype)]
                        for field, value in layer.arrays().items()}}
            for name, layer in plan.items()]


def export_bundles(model: nnx.Module, plan: Plan, out: str | os.PathLike, *,
                   settings: dict | None = None, payload_dtype=None,
                   overwrite: bool = False) -> list[Path]:
    """Writes one bundle per node of ``model`` with ``plan`` into ``out``; returns the folders.

    Arguments:
      model: the trained model (training form, exact masks).
      plan: its plan (checked against it).
      out: the folder that receives ``node-0`` .. ``node-{N-1}``.
      settings: JSON-able record of how to build the untrained network again
        (kept in every manifest; :func:`load_distributed` hands it back).
      payload_dtype: if given, must be the plan's payload (what travels is
        part of the plan: :func:`disco_jax.set_payload_dtype`).
      overwrite: replace ``out`` if it exists.

    The bundles are written to a temporary folder beside ``out`` and renamed
    into place: an interrupted export leaves nothing half-written at ``out``.

    Raises:
      PlanError: ``out`` exists and ``overwrite`` is False, or ``plan`` does
        not fit ``model``.
    """
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise PlanError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    _, state = nnx.split(to_inference(model, plan, payload_dtype=payload_dtype))
    arrays = {_leaf_name(path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}
    nodes, checksum = plan.nodes, plan_checksum(plan)
    with atomic_folder(out) as tmp:
        for node in range(nodes):
            folder = node_folder(tmp, node)
            folder.mkdir()
            rows = {name: np.ascontiguousarray(value[node]) for name, value in arrays.items()}
            np.savez(folder / WEIGHTS, **rows)
            manifest = {
                "format": FORMAT, "version": VERSION, "node": node, "nodes": nodes,
                "payload_dtype": plan.payload, "plan_checksum": checksum,
                "settings": settings, "layers": _layer_entries(plan),
                "arrays": {name: {"shape": list(row.shape), "dtype": str(row.dtype),
                                  "sha256": array_checksum(row)} for name, row in rows.items()},
                "weights_bytes": int(sum(row.nbytes for row in rows.values())),
            }
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return [node_folder(out, node) for node in range(nodes)]


@dataclasses.dataclass(frozen=True)
class Bundle:
    """One node's bundle, read and checked (:func:`read_bundle`)."""

    folder: Path
    node: int
    nodes: int
    payload_dtype: str
    plan_checksum: str
    settings: dict | None
    layers: list[dict]
    arrays: dict[str, np.ndarray]

    @property
    def weights_bytes(self) -> int:
        return int(sum(value.nbytes for value in self.arrays.values()))


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of the bundle in ``folder`` (nothing else is read).

    Raises:
      PlanError: no bundle there, or its manifest is damaged.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise PlanError(f"no node bundle at {folder}: {MANIFEST} is missing. Write the bundles "
                        "with python -m experiments.export --run RUN --out DIR (or "
                        "disco_jax.bundle.export_bundles) and give each node its node-i folder.")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, not {FORMAT!r}")
        if manifest.get("version") != VERSION:
            raise ValueError(f"version {manifest.get('version')!r}; this disco_jax reads "
                             f"version {VERSION}")
        for key in ("node", "nodes", "payload_dtype", "plan_checksum", "layers", "arrays"):
            if key not in manifest:
                raise KeyError(key)
    except (ValueError, KeyError, TypeError) as err:
        raise PlanError(f"{path} is damaged or not a disco_jax node bundle ({err}); export "
                        "the bundles again") from None
    return manifest


class _Weights:
    """A bundle's ``weights.npz``, open: its arrays read one at a time, each
    checked against the manifest (so that a node never holds two copies of
    its weights)."""

    def __init__(self, folder: Path, manifest: dict):
        self.path, self.expected = folder / WEIGHTS, manifest["arrays"]
        try:
            self.file = np.load(self.path, allow_pickle=False)
            names = set(self.file.files)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise self._unreadable(err) from None
        if names != set(self.expected):
            missing, extra = sorted(set(self.expected) - names), sorted(names - set(self.expected))
            self.file.close()
            raise PlanError(f"{self.path} does not hold the arrays its manifest lists (missing "
                            f"{missing[:3]}, extra {extra[:3]}); export the bundle again")

    def _unreadable(self, err: BaseException) -> PlanError:
        return PlanError(f"{self.path} cannot be read ({type(err).__name__}: {str(err)[:160]}); "
                         "the bundle is damaged or incomplete: export it again")

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            value = self.file[name]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise self._unreadable(err) from None
        info = self.expected[name]
        if (list(value.shape) != info["shape"] or str(value.dtype) != info["dtype"]
                or array_checksum(value) != info["sha256"]):
            raise PlanError(f"{self.path}: array {name} does not match its checksum in "
                            f"{MANIFEST} (the file was changed or damaged); export the bundle "
                            "again")
        return value

    def close(self) -> None:
        self.file.close()


def _own_manifest(folder: Path, node: int | None) -> dict:
    manifest = read_manifest(folder)
    if node is not None and manifest["node"] != node:
        raise PlanError(f"{folder} holds node {manifest['node']}'s bundle, but this process is "
                        f"node {node}: give each node its own folder (node-{node}).")
    return manifest


def read_bundle(folder: str | os.PathLike, node: int | None = None) -> Bundle:
    """Reads and checks the bundle in ``folder`` (the one node it belongs to).

    Arguments:
      node: the node this process is; the bundle must be that node's.

    Raises:
      PlanError: the bundle is another node's, a file is missing or damaged,
        or an array does not match its checksum.
    """
    folder = Path(folder)
    manifest = _own_manifest(folder, node)
    weights = _Weights(folder, manifest)
    try:
        arrays = {name: weights[name] for name in manifest["arrays"]}
    finally:
        weights.close()
    return Bundle(folder, int(manifest["node"]), int(manifest["nodes"]),
                  manifest["payload_dtype"], manifest["plan_checksum"], manifest.get("settings"),
                  manifest["layers"], arrays)


def _abstract_plan(layers: list[dict], arrays: dict) -> Plan:
    plans = {}
    for entry in layers:
        name = entry["name"]
        plans[name] = LayerPlan(name, LayerSpec(**entry["spec"]), int(entry["k"]),
                                **{field: arrays[name].get(field) for field in _FIELDS},
                                payload=entry.get("payload", "float32"))
    return Plan(plans)


def load_distributed(root: str | os.PathLike, mesh, build, *, payload_dtype=None,
                     compute_dtype=None, output_rank=2, output_channels=None,
                     split_input: bool = False,
                     program_cache: str | os.PathLike | None = None) -> DistributedModel:
    """The model of the bundles under ``root``, on ``mesh``, from this process's bundles only.

    Arguments:
      root: the folder :func:`export_bundles` wrote (on a node's machine it
        needs to hold only that node's ``node-i`` folder).
      mesh: the 1-D mesh of the bundles' node count (:func:`disco_jax.make_mesh`).
      build: ``() -> model``: the untrained network in training form (traced
        only: no weights are made).
      payload_dtype: if given, must be the bundles' (a plan is compiled for one).
      compute_dtype: the dtype the node's layers compute their products in
        (:func:`disco_jax.set_compute_dtype`; default float32): a choice of the
        node's own, not part of the bundle.
      output_rank, output_channels, split_input, program_cache: as
        :class:`DistributedModel`.

    Raises:
      PlanError: a bundle is missing, damaged, another node's or another
        plan's, made for another node count than the mesh's or from another
        network than ``build``'s, or its payload dtype is not
        ``payload_dtype``; the nodes of a run of one process per node hold
        bundles of different plans.
    """
    here = [node for node, device in enumerate(mesh.devices.flat)
            if device.process_index == jax.process_index()]
    folders = {node: node_folder(root, node) for node in here}
    first = _own_manifest(folders[here[0]], here[0])
    manifests = {here[0]: first}
    nodes = mesh.shape.get(AXIS)
    if first["nodes"] != nodes or len(mesh.shape) != 1:
        raise PlanError(f"the bundles under {root} are for {first['nodes']} nodes but the mesh "
                        f"is {dict(mesh.shape)}; build it with make_mesh({first['nodes']})")
    for node in here[1:]:
        manifests[node] = _own_manifest(folders[node], node)
        if manifests[node]["plan_checksum"] != first["plan_checksum"]:
            raise PlanError(f"{folders[node]} and {folders[here[0]]} are bundles of different "
                            f"plans ({manifests[node]['plan_checksum'][:16]} and "
                            f"{first['plan_checksum'][:16]}); export the bundles of one plan "
                            "together")
    if payload_dtype is not None and payload_of(payload_dtype) != first["payload_dtype"]:
        raise PlanError(f"the bundles under {root} send {first['payload_dtype']} payloads, not "
                        f"{payload_of(payload_dtype)}; export them from a model "
                        "trained with that payload (disco_jax.set_payload_dtype), or load them "
                        "without asking for another")
    shapes = {entry["name"]: {field: None if shape is None else
                              jax.ShapeDtypeStruct(tuple(shape[0]), np.dtype(shape[1]))
                              for field, shape in entry["arrays"].items()}
              for entry in first["layers"]}

    def structure(arrays):
        model = build()
        model.eval()
        if compute_dtype is not None:
            set_compute_dtype(model, compute_dtype)
        plan = _abstract_plan(first["layers"], arrays)
        for name, layer in disco_layers(model).items():  # what the bundles' plan sends
            if name in plan:
                layer.payload_dtype = plan[name].payload
        return to_inference(model, plan)

    try:
        graphdef, abstract = nnx.split(nnx.eval_shape(structure, shapes))
    except DiscoError as err:  # raised while tracing: drop jax's note on filtered frames
        reason = str(err).split("\n--------------------")[0]
        raise PlanError(f"the bundles under {root} do not fit the network that build() makes "
                        f"(were they exported from another network?): {reason}") from None
    sharding = NamedSharding(mesh, node_spec())
    devices = list(mesh.devices.flat)
    names = {_leaf_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    weights = {}
    try:
        for node in here:
            weights[node] = _Weights(folders[node], manifests[node])
            if set(weights[node].expected) != names:
                missing = sorted(names - set(weights[node].expected))
                extra = sorted(set(weights[node].expected) - names)
                raise PlanError(f"{folders[node]} does not hold the arrays the network that "
                                f"build() makes needs (missing {missing[:3]}, extra {extra[:3]}); "
                                "the bundle was exported from another network")

        def place(path, leaf):  # one array at a time, straight onto its node's device
            rows = []
            for node in here:
                row = weights[node][_leaf_name(path)]
                if row.shape != leaf.shape[1:] or row.dtype != leaf.dtype:
                    raise PlanError(f"{folders[node]}: array {_leaf_name(path)} is "
                                    f"{row.dtype}{list(row.shape)}, the network that build() "
                                    f"makes needs {leaf.dtype}{list(leaf.shape[1:])}; the bundle "
                                    "was exported from another network")
                rows.append(jax.device_put(row[None], devices[node]))
            return jax.make_array_from_single_device_arrays(leaf.shape, sharding, rows)

        state = jax.tree_util.tree_map_with_path(place, abstract)
    finally:
        for opened in weights.values():
            opened.close()
    return DistributedModel.from_parts(graphdef, state, mesh, nodes,
                                       checksum=first["plan_checksum"],
                                       payload_dtype=first["payload_dtype"],
                                       output_rank=output_rank, output_channels=output_channels,
                                       split_input=split_input, program_cache=program_cache)
