"""Test setup: 8 emulated CPU devices, strict jax promotion, hypothesis profiles.

XLA_FLAGS must be set before jax is imported, so it happens at the top of
this file, which pytest imports before any test module.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# Compiling a sharded program takes longer than hypothesis' default deadline.
settings.register_profile(
    "disco", deadline=None, print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# CI replays the same generated cases every run (derandomize); locally each run
# draws new ones.
settings.register_profile("disco-ci", parent=settings.get_profile("disco"), derandomize=True,
                          database=None)
settings.load_profile("disco-ci" if os.environ.get("CI") else "disco")
