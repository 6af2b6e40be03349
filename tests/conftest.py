"""Test setup: 8 emulated CPU devices, a persistent compilation cache, strict
jax promotion, hypothesis profiles.

XLA_FLAGS and the cache must be set before jax is imported, so it happens at
the top of this file, which pytest imports before any test module.
"""

import os
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# Many tests compile the same programs (the quick runs of one network, a run
# started again, the processes of a launch): jax's persistent compilation
# cache compiles each once per machine. Set through the environment, it
# reaches pytest-xdist's processes and the subprocesses the tests start. JAX
# keys an entry by the program, the compile options, XLA_FLAGS and its own
# version; least recently used entries go past 2 GiB (the processes lock the
# cache: the dev extra's filelock). Your own JAX_COMPILATION_CACHE_DIR wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(tempfile.gettempdir()) / f"disco_jax-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))

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
