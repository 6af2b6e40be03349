"""The exceptions disco_jax raises for bad input.

Every error names the layer, shape or value that is wrong and says what to do
about it, so that a user never has to read a stack of jax internals.
"""


class DiscoError(Exception):
    """Base class of every error disco_jax raises on purpose."""


class ConfigError(DiscoError, ValueError):
    """A layer, mask or argument that cannot work (shapes, k, node counts)."""


class MeshError(DiscoError, RuntimeError):
    """The device mesh cannot be built as asked (too few devices, ...)."""


class PlanError(DiscoError):
    """A plan file that is missing, corrupted, or made for another model."""
