"""Test setup: 8 emulated CPU devices, a persistent compilation cache, strict
jax promotion, hypothesis profiles.

XLA_FLAGS and the cache must be set before jax is imported, so it happens at
the top of this file, which pytest imports before any test module.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# Many tests compile the same programs (the quick runs of one network, a run
# started again, the processes of a launch): jax's persistent compilation
# cache compiles each once per test run. The first process of the run (with
# pytest-xdist, the controller) makes the cache folder and names it in the
# environment, so that the test processes and the subprocesses they start
# share it; it removes it at the end. JAX keys an entry by the program, the
# compile options, XLA_FLAGS and its own version. Without a size limit jax
# takes no lock (a lock and a scan of the folder at every entry made the
# run slower than no cache). Your own JAX_COMPILATION_CACHE_DIR is kept.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="disco_jax-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

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


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
