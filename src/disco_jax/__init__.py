"""disco_jax: DISCO (Distributed Inference with Sparse Communications) in JAX.

Within-layer model parallelism where node j sends node i only a small learned
subset of its channels. The public API is what this file re-exports:

- mesh: :data:`AXIS`, :func:`make_mesh`, :func:`ensure_host_devices`
- layers (training form): :class:`DiscoConv`, :class:`DiscoDense`,
  :class:`LayerSpec`, :class:`CommMask`
- masks: :func:`random_mask`, :func:`topk_mask`, :func:`dense_mask`,
  :func:`block_diagonal_mask`, :func:`k_for_ratio`
- plans: :func:`compile_layer`, :func:`compile_plan`, :func:`save_plan`,
  :func:`load_plan`, :class:`Plan`, :class:`LayerPlan`
- inference form: :class:`DistributedLayer`, :func:`node_forward`
- accounting: :func:`layer_costs`, :func:`hlo_permute_bytes`, :func:`hlo_flops`
"""

from disco_jax.accounting import (
    Cost as Cost,
)
from disco_jax.accounting import (
    hlo_flops as hlo_flops,
)
from disco_jax.accounting import (
    hlo_other_collectives as hlo_other_collectives,
)
from disco_jax.accounting import (
    hlo_permute_bytes as hlo_permute_bytes,
)
from disco_jax.accounting import (
    layer_costs as layer_costs,
)
from disco_jax.errors import (
    ConfigError as ConfigError,
)
from disco_jax.errors import (
    DiscoError as DiscoError,
)
from disco_jax.errors import (
    MeshError as MeshError,
)
from disco_jax.errors import (
    PlanError as PlanError,
)
from disco_jax.layers import (
    CommMask as CommMask,
)
from disco_jax.layers import (
    DiscoConv as DiscoConv,
)
from disco_jax.layers import (
    DiscoDense as DiscoDense,
)
from disco_jax.layers import (
    LayerSpec as LayerSpec,
)
from disco_jax.masks import (
    block_diagonal_mask as block_diagonal_mask,
)
from disco_jax.masks import (
    dense_mask as dense_mask,
)
from disco_jax.masks import (
    k_for_ratio as k_for_ratio,
)
from disco_jax.masks import (
    random_mask as random_mask,
)
from disco_jax.masks import (
    topk_mask as topk_mask,
)
from disco_jax.mesh import (
    AXIS as AXIS,
)
from disco_jax.mesh import (
    ensure_host_devices as ensure_host_devices,
)
from disco_jax.mesh import (
    make_mesh as make_mesh,
)
from disco_jax.parallel import (
    DistributedLayer as DistributedLayer,
)
from disco_jax.parallel import (
    node_forward as node_forward,
)
from disco_jax.plan import (
    LayerPlan as LayerPlan,
)
from disco_jax.plan import (
    Plan as Plan,
)
from disco_jax.plan import (
    compile_layer as compile_layer,
)
from disco_jax.plan import (
    compile_plan as compile_plan,
)
from disco_jax.plan import (
    load_plan as load_plan,
)
from disco_jax.plan import (
    save_plan as save_plan,
)

__version__ = "0.1.0"
