"""Compiled programs kept on disk (disco_jax.programs)."""

import chex
import jax
import jax.numpy as jnp
from helpers import TinyNet

import disco_jax as dj
from disco_jax import programs


def test_a_kept_program_is_loaded_not_compiled_and_gives_the_same_outputs(tmp_path,
                                                                         monkeypatch):
    model = TinyNet(2, 2)
    model.eval()
    x = jax.random.normal(jax.random.key(0), (3, 12, 12, 1))
    first = dj.DistributedModel(model, dj.make_mesh(2), program_cache=tmp_path)
    expected = first(x)
    (entry,) = tmp_path.glob(f"*{programs.SUFFIX}")

    def refuse(self):
        raise AssertionError("compiled again")

    monkeypatch.setattr(jax.stages.Lowered, "compile", refuse)
    again = dj.DistributedModel(model, dj.make_mesh(2), program_cache=tmp_path)
    compiled = again.compile(x)
    chex.assert_trees_all_equal(again.outputs(compiled(*again.inputs(x))), expected)
    assert list(tmp_path.glob(f"*{programs.SUFFIX}")) == [entry]


def test_a_damaged_entry_is_compiled_again_and_replaced(tmp_path):
    fn = jax.jit(lambda a: a * 2 + 1)
    lowered = fn.lower(jnp.ones(4))
    programs.load_or_compile(lowered, tmp_path)
    (entry,) = tmp_path.glob(f"*{programs.SUFFIX}")
    entry.write_bytes(b"not an executable")
    compiled = programs.load_or_compile(lowered, tmp_path)
    chex.assert_trees_all_equal(compiled(jnp.ones(4)), jnp.full(4, 3.0))
    assert entry.read_bytes() != b"not an executable"


def test_programs_of_other_shapes_are_kept_apart(tmp_path):
    fn = jax.jit(lambda a: a.sum())
    keys = {programs.program_key(fn.lower(jnp.ones(n))) for n in (3, 4)}
    assert len(keys) == 2


def test_a_program_kept_while_jax_caches_compilations_runs_after_loading(tmp_path):
    # the suite runs with jax's persistent compilation cache (tests/conftest.py)
    assert jax.config.jax_compilation_cache_dir
    model = TinyNet(2, 2, seed=3)
    model.eval()
    x = jax.random.normal(jax.random.key(1), (2, 12, 12, 1))
    expected = dj.DistributedModel(model, dj.make_mesh(2))(x)  # now in jax's cache
    dj.DistributedModel(model, dj.make_mesh(2), program_cache=tmp_path).compile(x)
    loaded = dj.DistributedModel(model, dj.make_mesh(2), program_cache=tmp_path)
    compiled = loaded.compile(x)  # read from tmp_path: it must hold XLA's whole program
    chex.assert_trees_all_equal(loaded.outputs(compiled(*loaded.inputs(x))), expected)
    assert jax.config.jax_enable_compilation_cache  # on again after the kept program
