"""DISCO linear layers (k x k conv, 1 x 1 conv, dense), written once.

A DISCO layer splits its input and output channels over N nodes. Node i
computes its C_out/N output channels as

    Y_i = W_ii * X_i + sum over j != i of W_ij[:, mask_ij] * X_j[mask_ij]

This module owns the layer's arithmetic and its training form:

- :class:`LayerSpec` is the static description (shapes, kernel, stride, N).
- :func:`linear` is the one conv/matmul both forms run. The training form
  (:class:`DiscoConv`, :class:`DiscoDense`) calls it on all channels with the
  off-diagonal blocks of the kernel masked; the inference form
  (:mod:`disco_jax.parallel`) calls it on one node's own channels followed by
  the received ones, with packed weights (:mod:`disco_jax.plan`).
- :class:`CommMask` holds the mask ``m[i, j, c]``: how much receiver node i
  reads channel c of sender node j. Its diagonal blocks are always read. It is
  a float array so that training methods may use it as a soft gate; a plan
  can only be compiled once it is binary with the same count k per pair.
- :class:`CommBasis` (optional, :meth:`_DiscoLinear.use_basis`): per ordered
  pair, the directions sender j's channels are read in. With a basis, what
  travels from j to i is k linear combinations of j's channels (a 1 x 1
  projection on the sender, ``x_j @ B[i, j][:, chosen]``) instead of k of
  the channels themselves; the mask then chooses directions, and the kernel's
  off-diagonal rows are the weights of those directions. Without one (the
  default) a direction is a channel: selection is the special case
  ``B[i, j] = I``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from disco_jax.errors import ConfigError
from disco_jax.payload import is_exact, payload_of, quantise

Padding = Literal["SAME", "VALID"] | int
_DIMS = ("NHWC", "HWIO", "NHWC")
_DEFAULT_INIT = nnx.initializers.lecun_normal()


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Static description of one DISCO layer.

    Attributes:
      kind: ``"conv"`` (2-D, NHWC, kernel HWIO) or ``"dense"`` (``[..., C]``).
      c_in, c_out: input and output channels of the whole layer.
      nodes: N, the number of nodes the channels are split over.
      kernel: spatial kernel size K (1 for dense).
      stride: spatial stride (1 for dense).
      padding: ``"SAME"``, ``"VALID"`` or a symmetric integer padding.
      use_bias: whether the layer adds a bias.
      split_input: True (a DISCO layer): node n owns C_in/N input channels and
        receives k per other node. False: every node is given the whole input
        (the network input, e.g. an RGB image) and computes its C_out/N
        outputs from it; nothing travels and C_in need not divide by N.
    """

    kind: Literal["conv", "dense"]
    c_in: int
    c_out: int
    nodes: int = 1
    kernel: int = 1
    stride: int = 1
    padding: Padding = "SAME"
    use_bias: bool = True
    split_input: bool = True

    def validate(self, name: str = "layer") -> LayerSpec:
        """Raises :class:`ConfigError` naming ``name`` if the spec cannot work."""
        if self.kind not in ("conv", "dense"):
            raise ConfigError(f"{name}: kind must be 'conv' or 'dense', got {self.kind!r}")
        for field in ("c_in", "c_out", "nodes", "kernel", "stride"):
            value = getattr(self, field)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ConfigError(f"{name}: {field} must be a positive integer, got {value!r}")
        if self.kind == "dense" and (self.kernel, self.stride) != (1, 1):
            raise ConfigError(f"{name}: a dense layer has kernel 1 and stride 1")
        if not (self.padding in ("SAME", "VALID") or (
                isinstance(self.padding, int) and self.padding >= 0)):
            raise ConfigError(
                f"{name}: padding must be 'SAME', 'VALID' or a non-negative int, "
                f"got {self.padding!r}")
        for field in ("c_in", "c_out") if self.split_input else ("c_out",):
            channels = getattr(self, field)
            if channels % self.nodes:
                raise ConfigError(
                    f"{name}: {field}={channels} does not divide over {self.nodes} nodes "
                    f"(each node owns C/N channels). Use a channel count that is a "
                    f"multiple of {self.nodes}, or another number of nodes.")
        return self

    @property
    def group_in(self) -> int:
        """Input channels a node holds: C_in/N, or C_in for a replicated input."""
        return self.c_in // self.nodes if self.split_input else self.c_in

    @property
    def mask_shape(self) -> tuple[int, int, int]:
        """Shape of the layer's :class:`CommMask`, ``(N, N, C_in/N)``."""
        return (self.nodes, self.nodes, self.group_in)

    @property
    def group_out(self) -> int:
        """Output channels owned by one node, C_out/N."""
        return self.c_out // self.nodes

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """Shape of the whole (training-form) kernel: HWIO for conv, IO for dense."""
        if self.kind == "conv":
            return (self.kernel, self.kernel, self.c_in, self.c_out)
        return (self.c_in, self.c_out)

    def packed_kernel_shape(self, k: int) -> tuple[int, ...]:
        """Shape of one node's packed kernel: input width C_in/N + (N-1)*k."""
        width = self.group_in + (self.nodes - 1) * k
        return (*self.kernel_shape[:-2], width, self.group_out)

    @property
    def subsamples_input(self) -> bool:
        """True for a strided 1 x 1 conv: it reads only every stride-th pixel.

        Such a layer subsamples its input first (locally, before anything is
        sent), so only the pixels it reads travel between nodes.
        """
        return (self.kind == "conv" and self.kernel == 1 and self.stride > 1
                and self.padding in ("SAME", "VALID", 0))

    def describe(self) -> str:
        replicated = "" if self.split_input else ", replicated input"
        if self.kind == "dense":
            return f"dense {self.c_in}->{self.c_out}, N={self.nodes}{replicated}"
        return (f"conv {self.kernel}x{self.kernel} {self.c_in}->{self.c_out}, "
                f"stride {self.stride}, N={self.nodes}{replicated}")


def read_input(spec: LayerSpec, x: jax.Array) -> jax.Array:
    """The part of the input the layer reads: a strided 1 x 1 conv keeps every
    stride-th pixel, every other layer reads all of ``x``."""
    if spec.subsamples_input:
        return x[:, ::spec.stride, ::spec.stride, :]
    return x


#: The dtypes a layer's products can run in (:func:`linear`; ``None`` = float32).
COMPUTE_DTYPES = ("float32", "bfloat16")
#: With bfloat16, a K x K conv whose output map has more pixels than this stays
#: one float32 XLA convolution (measured on a Xeon with AMX, ResNet-50 at 224 px:
#: the K*K shifted products of a 56 x 56 map cost more than the convolution).
TAPS_MAX_PIXELS = 28 * 28
#: ... and so does one that reads fewer channels per node than this (a stem).
TAPS_MIN_CHANNELS = 16
#: In float32, a K x K conv whose output map has at most this many pixels is
#: ``"taps"``: XLA:CPU's convolution on such maps is pathological (measured on a
#: Xeon, one core, jax 0.10, 3 x 3 conv, 512 channels, 2 x 2 map: forward 29 ms at batch 1
#: against 1.4 ms as taps; forward + backward 3.6 s at batch 64 against 27 ms),
#: while from 3 x 3 maps up the two are level or the convolution wins.
FLOAT32_TAPS_MAX_PIXELS = 2 * 2


def compute_dtype_of(dtype, where: str = "compute_dtype") -> str | None:
    """``dtype`` as a :data:`COMPUTE_DTYPES` name (``None`` for float32, the default).

    Raises:
      ConfigError: another dtype.
    """
    if dtype is None:
        return None
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in COMPUTE_DTYPES:
        raise ConfigError(f"{where}: a layer computes in one of {list(COMPUTE_DTYPES)}, "
                          f"got {dtype!r}")
    return None if name == "float32" else name


def _conv_geometry(spec: LayerSpec, height: int, width: int):
    """(stride, explicit ``[(lo, hi), (lo, hi)]`` padding, output height, output width)."""
    stride = 1 if spec.subsamples_input else spec.stride
    padding = spec.padding
    if isinstance(padding, int):
        padding = [(padding, padding), (padding, padding)]
    else:
        padding = jax.lax.padtype_to_pads((height, width), (spec.kernel, spec.kernel),
                                          (stride, stride), padding)
    out = [(size + lo + hi - spec.kernel) // stride + 1
           for size, (lo, hi) in zip((height, width), padding, strict=True)]
    return stride, [tuple(p) for p in padding], out[0], out[1]


def lowering(spec: LayerSpec, height: int = 1, width: int = 1,
             compute_dtype: str | None = None) -> str:
    """How :func:`linear` computes the layer, from the layer and its input map alone.

    - ``"conv"``: one XLA convolution, in float32 (of operands rounded to
      ``compute_dtype``);
    - ``"matmul"``: one matrix product over the channels (a dense layer, or a
      1 x 1 conv: every pixel is a row), in ``compute_dtype``;
    - ``"taps"``: a K x K conv as the sum of K*K matrix products, one per
      kernel tap, over shifted views of the padded input, in ``compute_dtype``.

    In float32 a conv is ``"conv"``, except a K x K conv whose output map has
    at most :data:`FLOAT32_TAPS_MAX_PIXELS` pixels: ``"taps"`` (XLA:CPU's
    convolution is many times slower there, its gradients most of all). In
    bfloat16 the products run on the CPU's matrix units where it has them
    (AMX): 1 x 1 convs and dense layers are ``"matmul"``, K x K convs
    ``"taps"`` unless their output map is larger than :data:`TAPS_MAX_PIXELS`
    or they read fewer than :data:`TAPS_MIN_CHANNELS` channels per node (and
    then ``"taps"`` still on maps of at most :data:`FLOAT32_TAPS_MAX_PIXELS`).
    A tap whose view of the padded input is padding only is left out (on a 1 x
    1 map a 3 x 3 "SAME" conv is one product). The choice depends on the
    layer's spec and map size only, never on the input width, so a layer's
    training form and every node of its inference form compute it the same way.
    """
    if spec.kind == "dense":
        return "matmul"
    if spec.kernel == 1 and spec.padding in ("SAME", "VALID", 0) and (
            spec.stride == 1 or spec.subsamples_input):
        return "conv" if compute_dtype is None else "matmul"
    _, _, out_h, out_w = _conv_geometry(spec, height, width)
    pixels = out_h * out_w
    if pixels <= FLOAT32_TAPS_MAX_PIXELS:
        return "taps"
    if compute_dtype is None or pixels > TAPS_MAX_PIXELS or spec.group_in < TAPS_MIN_CHANNELS:
        return "conv"
    return "taps"


def linear(spec: LayerSpec, x: jax.Array, kernel: jax.Array,
           bias: jax.Array | None, *, compute_dtype: str | None = None) -> jax.Array:
    """The layer's one conv/matmul, on input already passed through :func:`read_input`.

    Arguments:
      spec: the layer.
      x: ``f32[B, H, W, C']`` (conv) or ``f32[..., C']`` (dense), where C' is
        whatever input width ``kernel`` has: C_in in the training form, or
        C_in/N + (N-1)*k in the inference form.
      kernel: ``[K, K, C', C_o]`` (conv) or ``[C', C_o]`` (dense).
      bias: ``[C_o]`` or None.
      compute_dtype: ``None`` (float32) or ``"bfloat16"``: the dtype the
        products' operands are rounded to (accumulated in float32); how the
        layer is lowered follows from it (:func:`lowering`).

    Returns:
      ``f32[B, H_out, W_out, C_o]`` (conv) or ``f32[..., C_o]`` (dense).
    """
    how = lowering(spec, *(x.shape[1:3] if spec.kind == "conv" else ()),
                   compute_dtype=compute_dtype)
    if how == "conv":
        stride, padding, _, _ = _conv_geometry(spec, x.shape[1], x.shape[2])
        if compute_dtype is not None:  # rounded alike, convolved in float32 (XLA:CPU's fast one)
            x, kernel = (a.astype(compute_dtype).astype(a.dtype) for a in (x, kernel))
        y = jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), padding, dimension_numbers=_DIMS)
    elif how == "matmul":
        y = _product(x, kernel.reshape(kernel.shape[-2:]), compute_dtype)
    else:  # taps
        stride, padding, out_h, out_w = _conv_geometry(spec, x.shape[1], x.shape[2])
        dtype = compute_dtype or x.dtype
        padded = jnp.pad(x.astype(dtype), ((0, 0), *padding, (0, 0)))
        y = None
        for dy, dx in _live_taps(spec.kernel, stride, padding, x.shape[1:3], (out_h, out_w)):
            view = padded[:, dy:dy + (out_h - 1) * stride + 1:stride,
                          dx:dx + (out_w - 1) * stride + 1:stride, :]
            tap = _product(view, kernel[dy, dx], compute_dtype)
            y = tap if y is None else y + tap
    if bias is not None:
        y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
    return y


def _live_taps(kernel: int, stride: int, padding, size, out) -> list[tuple[int, int]]:
    """The kernel taps ``(dy, dx)`` whose view of the padded input reads at
    least one real pixel (the others add zeros); at least one."""
    def live(tap, lo, size, count):
        return any(lo <= tap + i * stride < lo + size for i in range(count))

    taps = [(dy, dx) for dy in range(kernel) for dx in range(kernel)
            if live(dy, padding[0][0], size[0], out[0])
            and live(dx, padding[1][0], size[1], out[1])]
    return taps or [(0, 0)]


def _product(x: jax.Array, kernel: jax.Array, compute_dtype: str | None) -> jax.Array:
    """``x @ kernel`` over the last axis, operands in ``compute_dtype``, result float32."""
    if compute_dtype is None:
        return jnp.matmul(x, kernel)
    return jnp.matmul(x.astype(compute_dtype), kernel.astype(compute_dtype),
                      preferred_element_type=jnp.float32)


def patches(spec: LayerSpec, x: jax.Array) -> jax.Array:
    """The rows :func:`linear` multiplies: each output position's receptive field.

    ``linear(spec, x, kernel, None)`` equals ``patches(spec, x) @
    kernel.reshape(-1, C_o)`` reshaped to the output, for any input width C'
    (the least-squares refit solves for kernels in this form).

    Arguments:
      x: ``[B, H, W, C']`` (conv, already passed through :func:`read_input`) or
        ``[..., C']`` (dense).

    Returns:
      ``[rows, K*K*C']``, taps in the kernel's (kh, kw, c) order.
    """
    if spec.kind == "dense":
        return x.reshape(-1, x.shape[-1])
    if spec.kernel == 1 and (spec.subsamples_input or spec.stride == 1):
        return x.reshape(-1, x.shape[-1])
    width = x.shape[-1]
    stride = 1 if spec.subsamples_input else spec.stride
    padding = spec.padding
    if isinstance(padding, int):
        padding = [(padding, padding), (padding, padding)]
    fields = jax.lax.conv_general_dilated_patches(
        x, (spec.kernel, spec.kernel), (stride, stride), padding,
        dimension_numbers=_DIMS)  # [B, Ho, Wo, C' * K * K], (c, kh, kw) order
    fields = fields.reshape(-1, width, spec.kernel * spec.kernel)
    return jnp.swapaxes(fields, 1, 2).reshape(-1, spec.kernel * spec.kernel * width)


def weight_mask(spec: LayerSpec, mask: jax.Array) -> jax.Array:
    """Expands a node-pair channel mask to the kernel's (C_in, C_out) plane.

    Arguments:
      mask: ``f32[N, N, C_in/N]``, ``mask[i, j, c]`` = how much receiver i reads
        channel c of sender j. The diagonal blocks (i == j) are forced to 1.

    Returns:
      ``f32[C_in, C_out]`` with ``out[j*C_in/N + c, i*C_out/N + o] = mask[i, j, c]``.
    """
    n = spec.nodes
    mask = jnp.where(jnp.eye(n, dtype=bool)[:, :, None], jnp.ones_like(mask), mask)
    per_input = jnp.transpose(mask, (1, 2, 0)).reshape(spec.c_in, n)  # [C_in, N_dst]
    return jnp.repeat(per_input, spec.group_out, axis=1)


def basis_kernel(spec: LayerSpec, kernel: jax.Array, read: jax.Array,
                 basis: jax.Array | None) -> jax.Array:
    """The training-form kernel in the network's own channels.

    Arguments:
      kernel: ``[*K, C_in, C_out]``; its off-diagonal rows are the weights of
        the basis directions (of the channels themselves when ``basis`` is None).
      read: ``f32[N, N, C_in/N]``, the mask (diagonal blocks forced to 1).
      basis: ``f32[N, N, C_in/N, C_in/N]`` or None; ``basis[i, j][:, d]`` is
        direction d of sender j as receiver i reads it (diagonal blocks unused).

    Returns:
      ``[*K, C_in, C_out]`` with block (j, i) = ``B[i, j] @ diag(m[i, j]) @ W_ij``
      off the diagonal and ``W_ii`` on it.
    """
    n, g_in, g_out = spec.nodes, spec.group_in, spec.group_out
    eye = jnp.eye(n, dtype=bool)
    read = jnp.where(eye[:, :, None], jnp.ones_like(read), read)
    if basis is None:
        mask = weight_mask(spec, read)
        return kernel * mask.reshape((1,) * (kernel.ndim - 2) + mask.shape)
    identity = jnp.broadcast_to(jnp.eye(g_in, dtype=basis.dtype), basis.shape)
    basis = jnp.where(eye[:, :, None, None], identity, basis) * read[:, :, None, :]
    blocks = kernel.reshape(-1, n, g_in, n, g_out)  # [taps, j, direction, i, o]
    mixed = jnp.einsum("ijcd,tjdio->tjcio", basis, blocks)
    return mixed.reshape(kernel.shape)


class CommMask(nnx.Variable):
    """Which channels each node reads from each other node: ``f32[N, N, C_in/N]``.

    A separate variable type, so that optimisers and checkpoints can treat it
    apart from the weights (``nnx.state(model, CommMask)``).
    """


class CommBasis(nnx.Variable):
    """The directions each node reads another node's channels in:
    ``f32[N, N, C_in/N, C_in/N]``, ``basis[i, j][:, d]`` = direction d of sender
    j for receiver i (diagonal blocks unused). Not trained by the optimiser
    (it is not an ``nnx.Param``); set by :mod:`disco_jax.projections`.
    """


_INPUTS: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "disco_inputs", default=None)


@contextlib.contextmanager
def record_inputs() -> Iterator[dict[int, jax.Array]]:
    """Within the block, DISCO layers (and the other modules that cost
    something, see :func:`note_input`) called in training form record their
    inputs (arrays or tracers), keyed by ``id(module)``: their shapes serve the
    accounting, their values the activation-aware mask importance."""
    inputs: dict[int, jax.Array] = {}
    token = _INPUTS.set(inputs)
    try:
        yield inputs
    finally:
        _INPUTS.reset(token)


def note_input(module: nnx.Module, x: jax.Array) -> None:
    """Records ``x`` as ``module``'s input within :func:`record_inputs`."""
    recorder = _INPUTS.get()
    if recorder is not None:
        recorder[id(module)] = x


class _DiscoLinear(nnx.Module):
    """Shared body of :class:`DiscoConv` and :class:`DiscoDense` (training form)."""

    spec: LayerSpec

    def _init(self, spec: LayerSpec, name: str | None, kernel_init: Callable,
              rngs: nnx.Rngs) -> None:
        self.name = name or spec.describe()
        self.spec = spec.validate(self.name)
        self.kernel = nnx.Param(kernel_init(rngs.params(), spec.kernel_shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((spec.c_out,), jnp.float32)) if spec.use_bias else None
        # a layer on the replicated input reads everything and has no mask
        self.mask = CommMask(jnp.ones(spec.mask_shape, jnp.float32)) if spec.split_input else None
        self.basis = nnx.data(None)  # directions are channels; see use_basis
        self.compute_dtype = None  # float32; see set_compute_dtype
        self.payload_dtype = "float32"  # what the other nodes' channels arrive as; see
        # set_payload_dtype

    def use_basis(self, basis: jax.Array | None = None) -> None:
        """Reads the other nodes' channels in a basis of directions from now on
        (:class:`CommBasis`; default: the identity, which changes nothing).

        Raises:
          ConfigError: the layer reads the replicated input (nothing travels), or
            ``basis`` is not ``[N, N, C_in/N, C_in/N]``.
        """
        spec = self.spec
        if not spec.split_input:
            raise ConfigError(f"{self.name}: a layer on the replicated network input sends "
                              "nothing, so it has no basis to read other nodes in")
        shape = (*spec.mask_shape, spec.group_in)
        if basis is None:
            basis = jnp.broadcast_to(jnp.eye(spec.group_in, dtype=jnp.float32), shape)
        if tuple(basis.shape) != shape:
            raise ConfigError(f"{self.name}: a basis is [N, N, C_in/N, C_in/N] = {shape}, "
                              f"got {tuple(basis.shape)}")
        self.basis = nnx.data(CommBasis(jnp.asarray(basis, jnp.float32)))

    def masked_kernel(self) -> jax.Array:
        """The training-form kernel: off-diagonal blocks multiplied by the mask
        (and read in the layer's basis, if it has one: :func:`basis_kernel`)."""
        kernel = self.kernel[...]
        if not self.spec.split_input:
            return kernel
        basis = None if self.basis is None else self.basis[...]
        return basis_kernel(self.spec, kernel, self.mask[...], basis)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Training form: the whole layer on one device, all C_in channels in.

        Arguments:
          x: ``f32[B, H, W, C_in]`` (conv) or ``f32[..., C_in]`` (dense).
        """
        expected_rank = 4 if self.spec.kind == "conv" else None
        if x.shape[-1] != self.spec.c_in or (expected_rank and x.ndim != expected_rank):
            layout = "[B, H, W, C]" if self.spec.kind == "conv" else "[..., C]"
            raise ConfigError(
                f"{self.name}: expected input {layout} with C={self.spec.c_in}, "
                f"got shape {tuple(x.shape)}")
        note_input(self, x)
        bias = None if self.bias is None else self.bias[...]
        x = read_input(self.spec, x)
        if self.spec.split_input and not is_exact(self.payload_dtype):
            x, kernel = self._through_the_wire(x)
        else:
            kernel = self.masked_kernel()
        return linear(self.spec, x, kernel, bias, compute_dtype=self.compute_dtype)

    def _through_the_wire(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The input and kernel of the training form with a lossy payload: each
        node reads its own channels as they are and the other nodes' channels
        (or directions) as the wire delivers them (:func:`disco_jax.payload.quantise`).

        Returns ``[x, quantise(x)]`` with the kernel's diagonal blocks above
        its masked off-diagonal ones. With a basis, or an input ``[B, C]``
        (whose int8 scale covers one message's k values), ``[x, quantise(R)]``
        instead, where ``R[..., i, j, d]`` is direction (or channel) d of
        sender j as receiver i reads it, each read only by receiver i's
        outputs. Both have the input width the kernel expects, so
        :func:`linear` computes them as any other input.
        """
        spec, payload = self.spec, self.payload_dtype
        n, g_in, g_out = spec.nodes, spec.group_in, spec.group_out
        kernel, mask = self.kernel[...], self.mask[...]
        own = basis_kernel(spec, kernel, jnp.zeros(spec.mask_shape, kernel.dtype), None)
        if self.basis is None and x.ndim > 2:  # the channels themselves, a scale each
            off = basis_kernel(spec, kernel, mask, None) - own
            return (jnp.concatenate([x, quantise(payload, x)], -1),
                    jnp.concatenate([own, off], -2))
        senders = x.reshape(*x.shape[:-1], n, g_in)  # [..., j, c]
        if self.basis is None:
            messages = jnp.broadcast_to(senders[..., None, :, :], (*x.shape[:-1], n, n, g_in))
        else:
            messages = jnp.einsum("...jc,ijcd->...ijd", senders, self.basis[...])
        if x.ndim == 2:  # [B, i, j, d]: one scale per message, over what travels
            received = quantise(payload, messages, axes=(3,), counted=mask > 0)
        else:  # one scale per direction, over the pixels
            received = quantise(payload, messages.reshape(*x.shape[:-1], n * n * g_in))
        blocks = kernel.reshape(-1, n, g_in, n, g_out)  # [taps, j, direction, i, o]
        read = jnp.transpose(mask, (1, 2, 0))[None, :, :, :, None]  # [1, j, d, i, 1]
        eye = jnp.eye(n, dtype=kernel.dtype)
        off = jnp.einsum("tjdio,ik,ij->tijdko", blocks * read, eye, 1 - eye)
        off = off.reshape(*kernel.shape[:-2], n * n * g_in, spec.c_out)
        received = received.reshape(*x.shape[:-1], n * n * g_in)
        return jnp.concatenate([x, received], -1), jnp.concatenate([own, off], -2)


class DiscoConv(_DiscoLinear):
    """A 2-D convolution (NHWC) whose channels are split over ``nodes`` nodes.

    Arguments:
      in_features, out_features: C_in and C_out of the whole layer.
      kernel_size: K (square kernels).
      strides: the stride (both spatial axes).
      padding: ``"SAME"``, ``"VALID"`` or a symmetric integer.
      nodes: N; C_in and C_out must divide by it.
      use_bias: whether to add a bias.
      split_input: False for a layer that reads the replicated network input
        (see :class:`LayerSpec`).
      name: used in error messages and as the layer's name in plans when the
        layer is compiled on its own.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
                 strides: int = 1, padding: Padding = "SAME", nodes: int = 1,
                 use_bias: bool = True, split_input: bool = True, name: str | None = None,
                 kernel_init: Callable = _DEFAULT_INIT,
                 rngs: nnx.Rngs):
        spec = LayerSpec("conv", in_features, out_features, nodes, kernel_size, strides,
                         padding, use_bias, split_input)
        self._init(spec, name, kernel_init, rngs)


class DiscoDense(_DiscoLinear):
    """A dense layer on ``[..., C_in]`` whose channels are split over ``nodes`` nodes.

    Arguments are those of :class:`DiscoConv` without the spatial ones.
    """

    def __init__(self, in_features: int, out_features: int, *, nodes: int = 1,
                 use_bias: bool = True, split_input: bool = True, name: str | None = None,
                 kernel_init: Callable = _DEFAULT_INIT,
                 rngs: nnx.Rngs):
        spec = LayerSpec("dense", in_features, out_features, nodes, 1, 1, "SAME", use_bias,
                         split_input)
        self._init(spec, name, kernel_init, rngs)


def disco_layers(model: nnx.Module) -> dict[str, _DiscoLinear]:
    """The DISCO layers of ``model`` by path name (``"blocks/0/conv1"``); a lone
    layer is named by its ``name``."""
    found = {}
    for path, module in nnx.iter_modules(model):
        if isinstance(module, _DiscoLinear):
            found["/".join(str(p) for p in path) or module.name] = module
    return found


def set_compute_dtype(model: nnx.Module, dtype) -> None:
    """From now on every DISCO layer of ``model`` (training or inference form)
    computes its products in ``dtype`` (:data:`COMPUTE_DTYPES`; ``None`` or
    ``"float32"``: the default). :func:`disco_jax.to_inference` keeps each
    layer's choice, so set it on the trained model before making its
    inference form, and the reference and the mesh compute alike.

    Raises:
      ConfigError: a dtype outside :data:`COMPUTE_DTYPES`.
    """
    name = compute_dtype_of(dtype)
    for _, module in nnx.iter_modules(model):
        if "compute_dtype" in vars(module):  # DiscoConv, DiscoDense, PlannedLinear
            module.compute_dtype = name


def set_payload_dtype(model: nnx.Module, dtype) -> None:
    """From now on every DISCO layer of ``model`` sends the channels (or
    directions) other nodes read as ``dtype`` (:data:`disco_jax.payload.PAYLOADS`;
    ``None`` or ``"float32"``: the default). The training form then reads them
    as the wire delivers them (:func:`disco_jax.payload.quantise`, with a
    straight-through gradient), so training after this teaches the network to
    read them, and the single-device reference quantises as the mesh does.
    :func:`disco_jax.compile_plan` records each layer's payload in its plan.

    Raises:
      ConfigError: a dtype outside the payloads.
    """
    name = payload_of(dtype)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, _DiscoLinear):
            module.payload_dtype = name


class NodeConcat(nnx.Module):
    """Concatenates channel-split tensors node by node: the skip connection of
    a decoder.

    With tensors split over N nodes in contiguous blocks of ``C_t/N``
    channels, node i's block of the result is its blocks of each input, in
    order, ``[a_i, b_i, ...]``: each node concatenates what it holds, so the
    concatenation needs no communication, and the DISCO layer that reads the
    result sees its input laid out the same way in both forms. (A plain
    ``jnp.concatenate`` on the global tensors would put every channel of
    ``a`` before every channel of ``b`` and give node i other channels than it
    holds; the equivalence tests catch that.)

    Training form: ``NodeConcat(nodes)`` on global ``[..., C_t]``; inference
    form (:func:`disco_jax.to_inference`): each node's local concatenation.
    """

    def __init__(self, nodes: int, name: str = "concat"):
        self.nodes, self.name = nodes, name

    def __call__(self, *xs: jax.Array) -> jax.Array:
        for x in xs:
            if x.shape[-1] % self.nodes or x.shape[:-1] != xs[0].shape[:-1]:
                raise ConfigError(
                    f"{self.name}: concatenates tensors of one shape but the last axis, "
                    f"each with channels divisible by {self.nodes} nodes; got shapes "
                    f"{[tuple(x.shape) for x in xs]}")
        n = self.nodes
        blocks = [x.reshape(*x.shape[:-1], n, x.shape[-1] // n) for x in xs]
        return jnp.concatenate(blocks, -1).reshape(*xs[0].shape[:-1], -1)

    def inference_form(self, nodes: int, name: str) -> NodeConcat:
        if nodes != self.nodes:
            raise ConfigError(f"{name}: NodeConcat for {self.nodes} nodes in a model run on "
                              f"{nodes}; build the model for {nodes} nodes")
        return NodeConcat(1, name)  # inside shard_map each node holds its own blocks


class PixelShuffle(nnx.Module):
    """Sub-pixel upsampling by ``scale`` = r that stays on each node.

    ``[B, H, W, C * r^2]`` -> ``[B, r H, r W, C]`` in PyTorch's order
    (``nn.PixelShuffle``, "CRD"): input channel ``c * r^2 + i * r + j`` becomes
    pixel ``(i, j)`` of each r x r cell of output channel ``c``. With the
    channels split over N nodes in contiguous blocks, node n holds whole
    groups of r^2 (those of its own output channels) exactly when C divides
    by N, and then shuffling each node's block on its own gives that node's
    output channels: no communication, and the same arithmetic in both forms.

    Training form: ``PixelShuffle(r, nodes)`` on global arrays; inference form
    (:func:`disco_jax.to_inference`): each node's shuffle of its own block.
    """

    def __init__(self, scale: int, nodes: int = 1, name: str = "pixel_shuffle"):
        if not (isinstance(scale, int | np.integer) and scale >= 1):
            raise ConfigError(f"{name}: scale must be a positive integer, got {scale!r}")
        self.scale, self.nodes, self.name = int(scale), nodes, name

    def __call__(self, x: jax.Array) -> jax.Array:
        r, n = self.scale, self.nodes
        if x.ndim != 4 or x.shape[-1] % (r * r * n):
            where = "" if n == 1 else (f": over {n} nodes each node's {x.shape[-1] // n} "
                                       f"channels must be whole groups of {r * r}, or a "
                                       f"group would straddle two nodes")
            raise ConfigError(
                f"{self.name}: x{r} sub-pixel upsampling takes [B, H, W, C * {r * r}] with "
                f"C divisible by {n} node(s), got shape {tuple(x.shape)}{where}; give the "
                f"conv before it {r * r} x (a multiple of {n}) output channels")
        b, h, w, c = x.shape
        y = x.reshape(b, h, w, c // (r * r), r, r)
        return y.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))

    def inference_form(self, nodes: int, name: str) -> PixelShuffle:
        if nodes != self.nodes:
            raise ConfigError(f"{name}: PixelShuffle for {self.nodes} nodes in a model run on "
                              f"{nodes}; build the model for {nodes} nodes")
        return PixelShuffle(self.scale, 1, name)  # each node shuffles its own block
