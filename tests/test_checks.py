"""A mesh check kept beside its checkpoint is read back only for the same
model, plan, test set and code, and only where it covers what is asked."""

import json

import numpy as np
import pytest
from flax import nnx
from helpers import TinyNet

import disco_jax as dj
from disco_jax.data import Split
from experiments import checks


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    split = Split(rng.normal(size=(6, 12, 12, 1)).astype(np.float32),
                  rng.integers(0, 8, 6).astype(np.int32))
    model = TinyNet(2, 1)
    return model, dj.compile_plan(model), split


def _key(model, plan, split, **changes):
    return checks.check_key(model, plan, split, **({"batch": 6, "nodes": 2} | changes))


def test_the_key_changes_with_the_model_the_plan_the_test_set_and_the_settings(case):
    model, plan, split = case
    key = _key(model, plan, split)
    assert _key(model, plan, split) == key  # deterministic
    assert _key(model, plan, split, batch=3) != key
    assert _key(model, plan, split, nodes=4) != key
    assert _key(model, plan, Split(split.images[:5], split.labels[:5])) != key
    labels = split.labels.copy()
    labels[0] += 1
    assert _key(model, plan, Split(split.images, labels)) != key
    other = TinyNet(2, 1, seed=1)
    assert _key(model, dj.compile_plan(other), split) != key  # another plan
    model.stem_bn.mean[...] = model.stem_bn.mean[...] + 1e-3  # state outside the plan
    assert _key(model, plan, split) != key
    model.rngs = nnx.Rngs(dropout=0)  # a key in the state (a model with dropout has one)
    assert _key(model, plan, split) == _key(model, plan, split)


def test_a_kept_check_is_read_back_only_when_it_covers_what_is_asked(tmp_path):
    calls = []

    def check(reference):
        def run():
            calls.append(reference)
            return {"metrics": {"top1": 0.5}, "reference": reference}
        return run

    first = checks.kept(tmp_path, "k1", check(False), reference=False)
    assert calls == [False] and first["checked_at"]
    # without the reference it does not serve a check with one
    with_reference = checks.kept(tmp_path, "k1", check(True), reference=True)
    assert calls == [False, True] and with_reference["reference"]
    # with it, it serves both; the file is read, nothing is run
    assert checks.kept(tmp_path, "k1", check(False), reference=False) == with_reference
    assert checks.kept(tmp_path, "k1", check(True), reference=True) == with_reference
    assert calls == [False, True]
    # another key, or a file that cannot be read: checked again and rewritten
    checks.kept(tmp_path, "k2", check(True), reference=True)
    assert calls == [False, True, True]
    assert json.loads((tmp_path / checks.CHECK).read_text())["key"] == "k2"
    (tmp_path / checks.CHECK).write_text('{"key": "k2", "check"')
    checks.kept(tmp_path, "k2", check(True), reference=True)
    assert calls == [False, True, True, True]
    assert checks.kept(None, "k2", check(False), reference=False)["reference"] is False


def test_the_code_fingerprint_covers_the_library_and_the_experiments(monkeypatch, tmp_path):
    import disco_jax

    key = checks.code_fingerprint()
    assert len(key) == 64
    copy = tmp_path / "disco_jax"
    copy.mkdir()
    (copy / "__init__.py").write_text("")  # a library of other code
    monkeypatch.setattr(disco_jax, "__file__", str(copy / "__init__.py"))
    checks.code_fingerprint.cache_clear()
    try:
        assert checks.code_fingerprint() != key
    finally:
        monkeypatch.undo()
        checks.code_fingerprint.cache_clear()
    assert checks.code_fingerprint() == key
