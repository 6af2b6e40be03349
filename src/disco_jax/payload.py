"""What the exchanged channels travel as: the payload dtype, written once.

A layer's plan names its payload (:data:`PAYLOADS`):

- ``"float32"``: the values as they are (4 bytes each);
- ``"bfloat16"``: rounded to bfloat16 (2 bytes each);
- ``"int8"``: each sent channel of each sample scaled by its own scale,
  ``s = max|x| / 127`` over the channel's pixels (or tokens), rounded to
  bfloat16, and rounded to an integer in [-127, 127] (1 byte each); the
  scales travel with the values (2 bytes each) and are counted. An input
  ``[B, C]`` has one value per channel, so there one scale per sample covers
  the k channels sent.

The arithmetic lives here for both forms of a layer. The inference form
(:mod:`disco_jax.parallel`) packs what it sends with :func:`encode` (one
array of unsigned bytes or words per message, so that XLA cannot move a cast
across the ``ppermute``) and unpacks it with :func:`decode`; the training
form (:mod:`disco_jax.layers`) reads the other nodes' channels through
:func:`quantise`, which gives exactly ``decode(encode(x))`` with a
straight-through gradient, so a network fine-tuned with it learns to read
what the wire delivers, and the single-device reference quantises as the mesh
does. :func:`message_bytes` is the accounting's count of the same bytes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from disco_jax.errors import ConfigError

#: The payload dtypes a plan can send, by name; float32 is the default.
PAYLOADS = ("float32", "bfloat16", "int8")
_INT8_MAX = 127
_SCALE_DTYPE = jnp.bfloat16


def payload_of(dtype, where: str = "payload_dtype") -> str:
    """``dtype`` (a name, a numpy/jax dtype, or None for float32) as a name in
    :data:`PAYLOADS`.

    Raises:
      ConfigError: another dtype, naming ``where``.
    """
    if dtype is None:
        return "float32"
    try:
        name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in PAYLOADS:
        raise ConfigError(f"{where}: the channels that travel can be one of {list(PAYLOADS)}, "
                          f"got {dtype!r}")
    return name


def is_exact(payload: str) -> bool:
    """True when the receiver reads the sender's float32 values unchanged."""
    return payload == "float32"


def _scale_axes(ndim: int) -> tuple[int, ...]:
    """The axes one int8 scale covers: the pixels/tokens of one sample and
    channel, or, for ``[B, C]``, the channels of one sample."""
    return tuple(range(1, ndim - 1)) if ndim > 2 else (1,)


def _int8_parts(x: jax.Array, axes: tuple[int, ...] | None = None,
                counted: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """``(q: int8, scale: bfloat16)`` of float32 ``x``; ``q * scale`` is what arrives.

    One scale per slice over ``axes`` (default :func:`_scale_axes`), from the
    largest magnitude among the entries ``counted`` (default: all) marks."""
    magnitude = (jnp.abs(x) if counted is None
                 else jnp.where(jnp.broadcast_to(counted, x.shape), jnp.abs(x), 0.0))
    peak = jnp.max(magnitude, axis=_scale_axes(x.ndim) if axes is None else axes,
                   keepdims=True)
    scale = jnp.where(peak > 0, peak / _INT8_MAX, 1.0).astype(_SCALE_DTYPE)
    q = jnp.clip(jnp.round(x / scale.astype(x.dtype)), -_INT8_MAX, _INT8_MAX)
    return q.astype(jnp.int8), scale


def _dequantise(q: jax.Array, scale: jax.Array, dtype) -> jax.Array:
    return q.astype(dtype) * scale.astype(dtype)


def quantise(payload: str, x: jax.Array, *, axes: tuple[int, ...] | None = None,
             counted: jax.Array | None = None) -> jax.Array:
    """``x`` as the receiver reads it after the wire: equal to
    ``decode(payload, encode(payload, x), x.shape, x.dtype)``, with the
    gradient of the identity (straight-through).

    The training form lays out several messages side by side: then ``axes``
    are the axes one int8 scale covers (default: a message's, the pixels of
    one sample and channel) and ``counted`` (broadcast to ``x``) marks the
    entries that travel, the only ones a scale is taken over."""
    if is_exact(payload):
        return x
    if payload == "bfloat16":
        read = x.astype(jnp.bfloat16).astype(x.dtype)
    else:
        read = _dequantise(*_int8_parts(x, axes, counted), x.dtype)
    return x + jax.lax.stop_gradient(read - x)


def _words(x: jax.Array) -> jax.Array:
    """``x`` reinterpreted as unsigned integers of its width."""
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}"))


def encode(payload: str, x: jax.Array) -> jax.Array:
    """What one message carries, as one array of unsigned integers (XLA cannot
    move a cast across the ``ppermute`` of such an array; XLA:CPU otherwise
    sends a float32 payload after all).

    Arguments:
      x: ``f32[B, ..., k]``: the channels (or directions) sent to one node.

    Returns:
      float32: ``x``; bfloat16: ``uint16[B, ..., k]``; int8:
      ``uint8[B, values + 2 * scales]`` (each sample's values, then its scales).
    """
    if is_exact(payload):
        return x
    if payload == "bfloat16":
        return _words(x.astype(jnp.bfloat16))
    q, scale = _int8_parts(x)
    batch = x.shape[0]
    return jnp.concatenate([_words(q).reshape(batch, -1), _scale_bytes(scale, batch)], axis=1)


def _scale_bytes(scale: jax.Array, batch: int) -> jax.Array:
    """bfloat16 scales as 2 unsigned bytes each, ``uint8[B, 2 * scales]``."""
    return jax.lax.bitcast_convert_type(scale, jnp.uint8).reshape(batch, -1)


def decode(payload: str, message: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """The values a message carries (:func:`encode`'s inverse up to the
    rounding), as ``dtype[*shape]``."""
    if is_exact(payload):
        return message
    if payload == "bfloat16":
        return jax.lax.bitcast_convert_type(message, jnp.bfloat16).astype(dtype)
    batch, values = shape[0], math.prod(shape[1:])
    q = jax.lax.bitcast_convert_type(message[:, :values], jnp.int8).reshape(shape)
    scale_shape = tuple(1 if axis in _scale_axes(len(shape)) else size
                        for axis, size in enumerate(shape))
    scale = jax.lax.bitcast_convert_type(
        message[:, values:].reshape(batch, -1, 2), _SCALE_DTYPE).reshape(scale_shape)
    return _dequantise(q, scale, dtype)


def reference_tolerance(payload: str) -> float:
    """How far a whole network's outputs on the mesh may lie from its
    single-device reference, relative to their largest magnitude.

    float32: 1e-4 (the two sum in different orders). A lossy payload rounds
    the same values alike in both forms, but a layer's input on the mesh
    differs from the reference's in the last bits, so a value that sits on a
    rounding boundary can round up in one and down in the other: one step of
    the payload (1/127 of a channel's largest magnitude for int8, 2^-7 of a
    value for bfloat16), which the layers after it carry on. A single layer
    given one input rounds identically in both forms (1e-4 holds there)."""
    return {"float32": 1e-4, "bfloat16": 2.0**-7, "int8": 1 / _INT8_MAX}[payload_of(payload)]


def message_bytes(payload: str, channels: int, spatial: tuple[int, ...]) -> int:
    """Bytes of one message for one sample: ``channels`` channels of an input
    whose sample has spatial (or token) shape ``spatial`` (``()`` for ``[B, C]``)."""
    values = channels * math.prod(spatial)
    if payload == "float32":
        return 4 * values
    if payload == "bfloat16":
        return 2 * values
    scales = channels if spatial else (1 if channels else 0)
    return values + 2 * scales
