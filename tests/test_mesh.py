"""The device mesh and how entry points get emulated devices."""

import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

import disco_jax as dj


@pytest.mark.parametrize("nodes", [1, 2, 3, 4, 8])
def test_make_mesh_takes_the_first_devices_on_one_axis(nodes):
    mesh = dj.make_mesh(nodes)
    assert mesh.axis_names == (dj.AXIS,)
    assert list(mesh.devices) == jax.devices()[:nodes]


def test_more_nodes_than_devices_says_how_to_get_them():
    with pytest.raises(dj.MeshError, match=r"needs 16 devices.*XLA_FLAGS=--xla_force_host_platform"
                                           r"_device_count=16.*jax.distributed.initialize"):
        dj.make_mesh(16)


@pytest.mark.parametrize("bad", [0, -2, 1.5])
def test_mesh_size_must_be_a_positive_integer(bad):
    with pytest.raises(dj.MeshError, match="positive integer"):
        dj.make_mesh(bad)


def test_a_plan_on_a_mesh_of_another_size_is_refused():
    layer = dj.DiscoConv(8, 8, 3, nodes=2, name="conv1", rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match=r"conv1: the plan is for 2 nodes but the mesh"):
        dj.DistributedLayer(dj.compile_layer(layer), dj.make_mesh(4))


def test_distributed_input_with_wrong_channels_is_refused():
    layer = dj.DiscoConv(8, 8, 3, nodes=2, name="conv1", rngs=nnx.Rngs(0))
    distributed = dj.DistributedLayer(dj.compile_layer(layer), dj.make_mesh(2))
    with pytest.raises(dj.ConfigError, match=r"conv1: expected input \[B, H, W, C\] with C=8"):
        distributed(jax.numpy.zeros((1, 4, 4, 4)))


def run_python(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


PROBE = "import disco_jax as dj, jax; dj.ensure_host_devices(3); print(len(jax.devices()))"


def test_ensure_host_devices_provides_emulated_devices_in_a_fresh_process():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    assert run_python(PROBE, env) == "3"


def test_ensure_host_devices_respects_a_device_count_the_user_set():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=5")
    assert run_python(PROBE, env) == "5"


FAST = ("from disco_jax.mesh import use_fast_cpu_flags; import jax; use_fast_cpu_flags(); "
        "jax.numpy.zeros(1).block_until_ready(); import os; print(os.environ['XLA_FLAGS']); "
        "print(use_fast_cpu_flags())")


def test_fast_cpu_flags_are_added_before_the_backend_starts_and_never_override():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    added, after_start = run_python(FAST, env).splitlines()
    assert added == after_start == " ".join(dj.mesh.FAST_CPU_FLAGS)
    chosen = "--xla_cpu_experimental_ynn_fusion_type=individual_dot --xla_cpu_use_xnnpack=false"
    assert run_python(FAST, env | {"XLA_FLAGS": chosen}).splitlines() == [chosen, chosen]


def test_fast_cpu_flags_are_not_added_for_bfloat16_programs():
    """The YNNPACK fusions are bfloat16's fast path: a bfloat16 run keeps them."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    probe = ("from disco_jax.mesh import use_fast_cpu_flags; import os; "
             "print(repr(use_fast_cpu_flags('bfloat16')), repr(os.environ.get('XLA_FLAGS')))")
    assert run_python(probe, env) == "'' None"
    assert run_python(probe, env | {"XLA_FLAGS": "--xla_cpu_use_xnnpack=false"}) == (
        "'--xla_cpu_use_xnnpack=false' '--xla_cpu_use_xnnpack=false'")
