"""disco_jax: DISCO (Distributed Inference with Sparse Communications) in JAX.

Within-layer model parallelism where node j sends node i only a small learned
subset of its channels. The public API is what this file re-exports:

- mesh: :data:`AXIS`, :func:`make_mesh`, :func:`ensure_host_devices`
- layers (training form): :class:`DiscoConv`, :class:`DiscoDense`,
  :class:`LayerSpec`, :class:`CommMask`, :class:`CommBasis` (a layer that
  sends directions: ``layer.use_basis(...)``), :func:`disco_layers`,
  :func:`set_compute_dtype`, :func:`set_payload_dtype` (what travels:
  :mod:`disco_jax.payload`, float32, bfloat16 or int8 with per-channel scales)
- models: :mod:`disco_jax.models` (ResNet-18/34/50/101, ViT)
- transformer parts: :mod:`disco_jax.transformer` (LayerNorm with ``psum``
  statistics, attention split by heads, window attention, MLP, blocks)
- training: :mod:`disco_jax.train`, :mod:`disco_jax.sparsify` (mask methods),
  :mod:`disco_jax.refit` (least-squares refit of the weights that remain),
  :mod:`disco_jax.projections` (sending the k reduced-rank directions of a
  node's channels instead of k channels),
  :mod:`disco_jax.data`, :mod:`disco_jax.scenes` (multi-garment scenes for
  the dense tasks)
- tasks: :mod:`disco_jax.tasks` (:class:`~disco_jax.tasks.Classification`,
  :class:`~disco_jax.tasks.Segmentation`: loss, metrics, predictions;
  :func:`~disco_jax.train.train` and :func:`~disco_jax.train.evaluate` take one)
- masks: :func:`random_mask`, :func:`topk_mask`, :func:`dense_mask`,
  :func:`block_diagonal_mask`, :func:`k_for_ratio`, :func:`set_random_masks`
- plans: :func:`compile_layer`, :func:`compile_plan`, :func:`save_plan`,
  :func:`load_plan`, :class:`Plan`, :class:`LayerPlan`
- inference form: :class:`DistributedLayer` (one layer), :class:`DistributedModel`
  and :func:`to_inference` (a whole model), :func:`node_forward`
- accounting: :func:`layer_costs`, :func:`model_costs`, :func:`hlo_permute_bytes`,
  :func:`hlo_comm_bytes`, :func:`hlo_flops`
- one process per node: :mod:`disco_jax.launch` (``python -m disco_jax.launch``),
  :mod:`disco_jax.linkcheck`, :mod:`disco_jax.coordination` (barrier and
  agreement between nodes outside collectives); :func:`disco_jax.mesh.fetch`
  gathers an output that is spread over processes
- deployment: :mod:`disco_jax.bundle` (one bundle per node:
  ``export_bundles``, ``load_distributed``), :mod:`disco_jax.programs`
  (compiled programs kept per node)
"""

from disco_jax.accounting import (
    Cost as Cost,
    ModelCosts as ModelCosts,
    hlo_comm_bytes as hlo_comm_bytes,
    hlo_flops as hlo_flops,
    hlo_other_collectives as hlo_other_collectives,
    hlo_overlap as hlo_overlap,
    hlo_permute_bytes as hlo_permute_bytes,
    layer_costs as layer_costs,
    model_costs as model_costs,
)
from disco_jax.errors import (
    ConfigError as ConfigError,
    DiscoError as DiscoError,
    MeshError as MeshError,
    PlanError as PlanError,
)
from disco_jax.inference import (
    DistributedModel as DistributedModel,
    to_inference as to_inference,
)
from disco_jax.layers import (
    CommBasis as CommBasis,
    CommMask as CommMask,
    DiscoConv as DiscoConv,
    DiscoDense as DiscoDense,
    LayerSpec as LayerSpec,
    disco_layers as disco_layers,
    set_compute_dtype as set_compute_dtype,
    set_payload_dtype as set_payload_dtype,
)
from disco_jax.masks import (
    block_diagonal_mask as block_diagonal_mask,
    dense_mask as dense_mask,
    k_for_ratio as k_for_ratio,
    random_mask as random_mask,
    set_random_masks as set_random_masks,
    topk_mask as topk_mask,
)
from disco_jax.mesh import (
    AXIS as AXIS,
    ensure_host_devices as ensure_host_devices,
    make_mesh as make_mesh,
)
from disco_jax.parallel import (
    DistributedLayer as DistributedLayer,
    node_forward as node_forward,
)
from disco_jax.plan import (
    LayerPlan as LayerPlan,
    Plan as Plan,
    compile_layer as compile_layer,
    compile_plan as compile_plan,
    load_plan as load_plan,
    save_plan as save_plan,
)

__version__ = "0.1.0"
