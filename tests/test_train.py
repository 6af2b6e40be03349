"""Training: loss goes down, masks reach exact budgets, checkpoints resume exactly."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import TinyNet

import disco_jax as dj
from disco_jax import sparsify
from disco_jax.data import Split
from disco_jax.train import (
    CheckpointError,
    TrainConfig,
    evaluate,
    restore_model,
    restore_run,
    train,
)


@pytest.fixture(autouse=True)
def standard_dtype_promotion():
    """optax's schedules mix Python floats with int32 step counts, which strict
    promotion (set in conftest for our own code) refuses."""
    with jax.numpy_dtype_promotion("standard"):
        yield


def toy_data(n: int = 256, seed: int = 0) -> Split:
    """A learnable task: the class is the pattern under the noise (horizontal,
    vertical or diagonal stripes, or none)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:12, 0:12]
    patterns = np.stack([rows % 2, cols % 2, (rows + cols) % 2, np.zeros((12, 12))])
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = patterns[labels] + rng.normal(0, 0.3, (n, 12, 12))
    return Split(images[..., None].astype(np.float32), labels)


def fresh_model(nodes: int = 2, seed: int = 0) -> TinyNet:
    # random weights; masks set to the dense split below
    model = TinyNet(nodes, 0, classes=4, seed=seed)
    for layer in dj.disco_layers(model).values():
        if layer.spec.split_input:
            layer.mask[...] = dj.dense_mask(nodes, layer.spec.group_in)
    return model


CONFIG = TrainConfig(steps=30, batch_size=32, learning_rate=0.05, checkpoint_every=10)


def test_a_short_run_lowers_the_loss_and_learns_the_task():
    data = toy_data()
    model = fresh_model()
    before = evaluate(model, data, 4)
    first = train(model, data, 4, TrainConfig(steps=1, batch_size=32), progress=False)
    last = train(model, data, 4, CONFIG, progress=False)
    assert last.loss < first.loss
    assert evaluate(model, data, 4) > max(before, 0.6)


def test_runs_with_the_same_settings_compile_the_train_step_once(monkeypatch):
    from disco_jax import train as train_module

    traces = []

    def counting_loss(*args):
        traces.append(1)  # runs only while jax traces the step
        return loss(*args)

    loss = train_module._loss
    monkeypatch.setattr(train_module, "_loss", counting_loss)
    train_module.make_train_step.cache_clear()
    data = toy_data()
    for seed in (0, 1):  # another model of the same structure, another data order
        config = TrainConfig(steps=3, batch_size=32, learning_rate=0.05, seed=seed)
        train(fresh_model(seed=seed), data, 4, config, progress=False)
    assert len(traces) == 1
    train(fresh_model(), data, 4, TrainConfig(steps=3, batch_size=32, learning_rate=0.01),
          progress=False)
    assert len(traces) == 2  # another learning rate: another optimiser, one more trace


@pytest.mark.parametrize("nodes,importance", [(2, "weight_norm"), (4, "weight_norm"),
                                               (2, "saliency"), (2, "fisher"),
                                               (2, "random")])
def test_gradual_pruning_ends_with_exact_budgets_and_a_matching_plan(nodes, importance):
    model = fresh_model(nodes)
    method = sparsify.GradualPruning(comm_ratio=0.25, start=5, end=20, interval=5,
                                     importance=importance)
    train(model, toy_data(), 4, CONFIG, method=method, progress=False)
    for name, counts in sparsify.budgets(model).items():
        group = dj.disco_layers(model)[name].spec.group_in
        k = dj.k_for_ratio(0.25, group)
        off = ~np.eye(nodes, dtype=bool)
        assert np.all(counts[off] == k), name
    plan = dj.compile_plan(model)
    costs = dj.model_costs(model, (1, 12, 12, 1), plan)
    budget_bytes = sum(
        dj.layer_costs(entry_plan.spec, dj.k_for_ratio(0.25, entry_plan.spec.group_in),
                       costs.layers[name]["input_shape"][:-1])["disco"].comm_bytes
        for name, entry_plan in plan.items() if entry_plan.spec.split_input)
    assert costs.totals["disco"].comm_bytes == budget_bytes > 0


def test_random_order_depends_on_the_seed_and_not_on_the_weights():
    def masks(model_seed, order_seed):
        model = fresh_model(seed=model_seed)
        sparsify.GradualPruning(comm_ratio=0.25, start=0, end=0, importance="random",
                                seed=order_seed).update(model, 0)
        return [np.asarray(layer.mask[...]) for layer in dj.disco_layers(model).values()
                if layer.spec.split_input]

    first = masks(0, 0)
    for a, b in zip(first, masks(1, 0), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, masks(0, 1), strict=True))


def test_the_lasso_shrinks_the_channels_that_travel_and_only_those():
    def norms(lasso):
        model = fresh_model()
        method = sparsify.GradualPruning(comm_ratio=1.0, start=0, end=30, lasso=lasso)
        train(model, toy_data(), 4, CONFIG, method=method, progress=False)
        layers = [layer for layer in dj.disco_layers(model).values() if layer.spec.split_input]
        per_layer = [np.asarray(sparsify.channel_norms(layer)) for layer in layers]
        off = ~np.eye(2, dtype=bool)
        return (np.mean([n[off].mean() for n in per_layer]),
                np.mean([n[~off].mean() for n in per_layer]))

    (off_plain, own_plain), (off_lasso, own_lasso) = norms(0.0), norms(0.5)
    assert off_lasso < 0.7 * off_plain
    assert own_lasso > 0.9 * own_plain


def test_budget_shrinks_monotonically_to_k():
    method = sparsify.GradualPruning(comm_ratio=0.2, start=10, end=50)
    budgets = [method.budget(64, step) for step in range(0, 60)]
    assert budgets[0] == 64 and budgets[-1] == 13
    assert all(a >= b for a, b in zip(budgets, budgets[1:], strict=False))


@pytest.mark.parametrize("kind,expected_k", [("random", 1), ("no_comm", 0), ("dense_split", 4)])
def test_baseline_masks_are_exact(kind, expected_k):
    model = fresh_model()
    sparsify.FixedMask(kind, comm_ratio=0.25).update(model, 0)
    for name, counts in sparsify.budgets(model).items():
        group = dj.disco_layers(model)[name].spec.group_in
        k = {"random": dj.k_for_ratio(0.25, group), "no_comm": 0, "dense_split": group}[kind]
        assert counts[0, 1] == counts[1, 0] == k


def test_resumed_run_ends_where_an_uninterrupted_run_does(tmp_path):
    data = toy_data()
    method = sparsify.GradualPruning(comm_ratio=0.25, start=5, end=20, interval=5)
    whole = fresh_model()
    train(whole, data, 4, CONFIG, method=method, progress=False)

    # the same run, stopped dead after step 20 (its last checkpoint), then started again
    partial = train(fresh_model(), data, 4, CONFIG, method=method, progress=False,
                    checkpoint_dir=tmp_path, stop_after=20)
    assert partial.steps == 20
    restarted = fresh_model()  # as in a new process: nothing carried over in memory
    result = train(restarted, data, 4, CONFIG, method=method, progress=False,
                   checkpoint_dir=tmp_path)
    assert result.first_step == 20 and result.steps == 10
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(np.asarray, nnx.state(whole)),
                 jax.tree.map(np.asarray, nnx.state(restarted)))


def test_checkpoint_save_load_gives_identical_outputs(tmp_path):
    data = toy_data()
    model = fresh_model()
    train(model, data, 4, TrainConfig(steps=10, batch_size=32, checkpoint_every=10),
          progress=False, checkpoint_dir=tmp_path)
    loaded = fresh_model()
    result = train(loaded, data, 4, TrainConfig(steps=10, batch_size=32), progress=False,
                   checkpoint_dir=tmp_path)
    assert result.steps == 0
    model.eval()
    loaded.eval()
    np.testing.assert_array_equal(model(data.images[:8]), loaded(data.images[:8]))


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    train(fresh_model(), toy_data(), 4, TrainConfig(steps=2, batch_size=32, checkpoint_every=2),
          progress=False, checkpoint_dir=tmp_path)
    other = TinyNet(2, 0, width=16, classes=4)
    with pytest.raises(CheckpointError, match=r"written by another model .*: .* has shape"):
        train(other, toy_data(), 4, TrainConfig(steps=4, batch_size=32), progress=False,
              checkpoint_dir=tmp_path)


def test_restore_model_loads_the_latest_checkpoint_of_a_run(tmp_path):
    data = toy_data()
    model = fresh_model()
    train(model, data, 4, TrainConfig(steps=6, batch_size=32, checkpoint_every=3),
          progress=False, checkpoint_dir=tmp_path)
    loaded = fresh_model(seed=1)
    assert restore_model(loaded, tmp_path) == 6
    model.eval()
    loaded.eval()
    np.testing.assert_array_equal(model(data.images[:8]), loaded(data.images[:8]))


def test_restore_model_refuses_another_mesh_and_leaves_the_model_alone(tmp_path):
    train(fresh_model(nodes=2), toy_data(), 4,
          TrainConfig(steps=2, batch_size=32, checkpoint_every=2), progress=False,
          checkpoint_dir=tmp_path)
    other = fresh_model(nodes=4)
    before = jax.tree.map(np.asarray, nnx.state(other))
    with pytest.raises(CheckpointError, match=r"number of nodes.*mask.* has shape \[2, 2"):
        restore_model(other, tmp_path)
    jax.tree.map(np.testing.assert_array_equal, before,
                 jax.tree.map(np.asarray, nnx.state(other)))


def test_restore_model_names_a_folder_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint folder at"):
        restore_model(fresh_model(), tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no finished checkpoint"):
        restore_model(fresh_model(), tmp_path / "empty")


def test_adamw_runs_learn_and_resume_exactly(tmp_path):
    data = toy_data()
    config = TrainConfig(steps=30, batch_size=32, learning_rate=1e-2, warmup_steps=3,
                         optimizer="adamw", weight_decay=1e-4, checkpoint_every=10)
    whole = fresh_model()
    before = evaluate(whole, data, 4)
    train(whole, data, 4, config, progress=False)
    assert evaluate(whole, data, 4) > max(before, 0.6)
    train(fresh_model(), data, 4, config, progress=False, checkpoint_dir=tmp_path,
          stop_after=20)
    restarted = fresh_model()
    train(restarted, data, 4, config, progress=False, checkpoint_dir=tmp_path)
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(np.asarray, nnx.state(whole)),
                 jax.tree.map(np.asarray, nnx.state(restarted)))
    loaded = fresh_model(seed=1)
    assert restore_model(loaded, tmp_path) == 30  # an AdamW checkpoint loads as well
    whole.eval()
    loaded.eval()
    np.testing.assert_array_equal(whole(data.images[:8]), loaded(data.images[:8]))


def test_a_phase_of_no_steps_leaves_a_checkpoint_of_the_model_at_its_start(tmp_path):
    """A variant set at once and not retrained is still saved where its phase
    would have saved it (the experiments' inference loads it from there)."""
    data = toy_data()
    config = TrainConfig(steps=6, batch_size=32, checkpoint_every=6)
    model = fresh_model()
    first = train(model, data, 4, config, until=6, progress=False)
    model.head.kernel[...] = model.head.kernel[...] * 2  # changed between the phases
    second = train(model, data, 4, config, optimizer=first.optimizer, progress=False,
                   checkpoint_dir=tmp_path)
    assert second.steps == 0
    loaded = fresh_model(seed=1)
    assert restore_model(loaded, tmp_path) == 6
    np.testing.assert_array_equal(loaded.head.kernel[...], model.head.kernel[...])


def test_a_run_in_phases_ends_where_an_uninterrupted_run_does(tmp_path):
    """``until`` ends a phase; ``optimizer=`` goes on from it on the same schedule,
    in memory or from the phase's checkpoint (restore_run)."""
    data = toy_data()
    config = TrainConfig(steps=30, batch_size=32, learning_rate=1e-2, warmup_steps=3,
                         optimizer="adamw", checkpoint_every=30)
    method = sparsify.GradualPruning(comm_ratio=0.25, start=10, end=20, interval=5)
    whole = fresh_model()
    train(whole, data, 4, config, method=method, progress=False)

    phased = fresh_model()
    first = train(phased, data, 4, config, method=method, until=10, progress=False,
                  checkpoint_dir=tmp_path / "first")
    assert (first.first_step, first.steps, int(first.optimizer.step[...])) == (0, 10, 10)
    second = train(phased, data, 4, config, method=method, until=20, progress=False,
                   optimizer=first.optimizer)
    third = train(phased, data, 4, config, optimizer=second.optimizer, progress=False)
    assert (second.first_step, third.first_step, third.steps) == (10, 20, 10)

    reloaded = fresh_model(seed=1)
    step, optimizer = restore_run(reloaded, tmp_path / "first", optimizer="adamw")
    assert step == 10
    train(reloaded, data, 4, config, method=method, optimizer=optimizer, progress=False)
    for model in (phased, reloaded):
        jax.tree.map(np.testing.assert_array_equal,
                     jax.tree.map(np.asarray, nnx.state(whole)),
                     jax.tree.map(np.asarray, nnx.state(model)))


def test_going_on_from_another_kind_of_optimiser_is_refused(tmp_path):
    data = toy_data()
    sgd = train(fresh_model(), data, 4, TrainConfig(steps=2, batch_size=32), progress=False,
                checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="state of another optimiser or model"):
        train(fresh_model(), data, 4, TrainConfig(steps=4, batch_size=32, optimizer="adamw"),
              optimizer=sgd.optimizer, progress=False)
    with pytest.raises(CheckpointError, match="trained with the 'sgd' optimiser"):
        restore_run(fresh_model(), tmp_path, optimizer="adamw")


def test_resuming_with_another_optimiser_is_refused(tmp_path):
    train(fresh_model(), toy_data(), 4, TrainConfig(steps=2, batch_size=32, checkpoint_every=2),
          progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="trained with the 'sgd' optimiser and this run "
                                              "uses 'adamw'"):
        train(fresh_model(), toy_data(), 4,
              TrainConfig(steps=4, batch_size=32, optimizer="adamw"), progress=False,
              checkpoint_dir=tmp_path)


def test_an_unknown_optimiser_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(dj.ConfigError, match=r"optimizer must be one of \('sgd', 'adamw'\)"):
        train(fresh_model(), toy_data(), 4, TrainConfig(steps=2, optimizer="lamb"),
              progress=False, checkpoint_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_comm_ratio_outside_0_1_is_refused(bad):
    with pytest.raises(dj.ConfigError, match=r"comm ratio must be a number in \[0, 1\]"):
        sparsify.GradualPruning(comm_ratio=bad, start=0, end=10)


def test_saliency_ranks_channels_by_weight_norm_times_input_rms():
    model = fresh_model(2)
    images = toy_data().images[:8]
    rms = sparsify.input_rms(model, images)
    layers = {name: layer for name, layer in dj.disco_layers(model).items()
              if layer.spec.split_input}
    assert set(rms) == set(layers)
    with dj.layers.record_inputs() as inputs:
        model(images)
    expected, by_norm = {}, {}
    for name, layer in layers.items():
        spec = layer.spec
        assert rms[name].shape == (spec.c_in,)
        values = np.asarray(inputs[id(layer)]).reshape(-1, spec.c_in)
        np.testing.assert_allclose(rms[name], np.sqrt(np.mean(values**2, 0)), rtol=1e-5)
        k = dj.k_for_ratio(0.25, spec.group_in)
        norms = sparsify.channel_norms(layer)
        expected[name] = dj.topk_mask(norms * rms[name].reshape(1, 2, -1), k)
        by_norm[name] = dj.topk_mask(norms, k)
    sparsify.GradualPruning(0.25, start=0, end=0, lasso=0.0,
                            importance="saliency").update(model, 0, images=images)
    for name, layer in layers.items():
        np.testing.assert_array_equal(layer.mask[...], expected[name])
    assert any(not np.array_equal(expected[n], by_norm[n]) for n in layers)  # rms matters
    with pytest.raises(dj.ConfigError, match="images="):
        sparsify.GradualPruning(0.25, start=0, end=0, importance="saliency").update(model, 0)


def test_fisher_ranks_channels_by_the_mean_squared_per_sample_mask_gradient():
    model = fresh_model(2)
    data = toy_data()
    images, labels = data.images[:6], data.labels[:6]
    fisher = sparsify.mask_fisher(model, images, labels)
    layers = {name: layer for name, layer in dj.disco_layers(model).items()
              if layer.spec.split_input}
    assert set(fisher) == set(layers)

    def sample_loss(copy, image, label):
        logits = copy(image[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, label[None]).sum()

    squares = {name: 0.0 for name in layers}
    for image, label in zip(images, labels, strict=True):  # one sample at a time
        copy = nnx.clone(model)
        copy.eval()
        grads = nnx.grad(sample_loss, argnums=nnx.DiffState(0, dj.layers.CommMask))(
            copy, image, label)
        nnx.update(copy, grads)  # the gradients in the masks' places
        for name, layer in dj.disco_layers(copy).items():
            if name in layers:
                squares[name] = squares[name] + np.asarray(layer.mask[...]) ** 2
    expected = {}
    for name, layer in layers.items():
        np.testing.assert_allclose(fisher[name], squares[name] / len(images), rtol=1e-4,
                                   atol=1e-12)
        assert float(np.max(fisher[name][0, 1])) > 0  # off-diagonal entries carry information
        expected[name] = dj.topk_mask(fisher[name], dj.k_for_ratio(0.25, layer.spec.group_in))
    sparsify.GradualPruning(0.25, start=0, end=0, lasso=0.0, importance="fisher").update(
        model, 0, images=images, labels=labels)
    for name, layer in layers.items():
        np.testing.assert_array_equal(layer.mask[...], expected[name])
    with pytest.raises(dj.ConfigError, match="labels="):
        sparsify.GradualPruning(0.25, start=0, end=0, importance="fisher").update(
            model, 0, images=images)


def test_distillation_loss_is_the_mix_of_cross_entropy_and_the_tempered_kl():
    from disco_jax.tasks import Classification
    from disco_jax.train import Distillation, _loss

    data = toy_data(32)
    student, teacher = fresh_model(seed=0), fresh_model(seed=1)
    student.eval(), teacher.eval()
    images, labels = data.images, data.labels
    s, t = np.asarray(student(images), np.float64), np.asarray(teacher(images), np.float64)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    temperature, weight = 3.0, 0.7
    ce = -np.mean(log_softmax(s)[np.arange(len(labels)), labels])
    ls, lt = log_softmax(s / temperature), log_softmax(t / temperature)
    kl = np.mean(np.sum(np.exp(lt) * (lt - ls), -1))
    total, (loss, _) = _loss(student, images, labels, Classification(4), None, 0,
                             Distillation(weight, temperature), teacher(images))
    np.testing.assert_allclose(float(loss), (1 - weight) * ce + weight * temperature**2 * kl,
                               rtol=1e-5)
    assert float(total) == float(loss)  # no penalty


def test_distillation_makes_the_student_follow_the_teacher_and_leaves_the_teacher_alone():
    from disco_jax.train import Distillation

    data = toy_data()
    shifted = Split(data.images, (data.labels + 1) % 4)  # a teacher that learned other labels
    config = TrainConfig(steps=60, batch_size=32, learning_rate=0.05)
    teacher = fresh_model()
    train(teacher, shifted, 4, config, progress=False)
    assert evaluate(teacher, shifted, 4) > 0.9
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(teacher)))

    labels_only, distilled = fresh_model(), fresh_model()
    train(labels_only, data, 4, config, progress=False)
    train(distilled, data, 4, config, progress=False, teacher=teacher,
          distill=Distillation(weight=1.0, temperature=1.0))
    assert evaluate(labels_only, data, 4) > 0.9 and evaluate(labels_only, shifted, 4) < 0.1
    # the teacher's answers, not the labels (60 steps on soft targets: most of them)
    assert evaluate(distilled, shifted, 4) > 0.6 and evaluate(distilled, data, 4) < 0.2
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(teacher)))
    jax.tree.map(np.testing.assert_array_equal, before, after)  # BatchNorm statistics too


def test_distillation_settings_that_cannot_work_are_refused():
    from disco_jax.errors import ConfigError
    from disco_jax.train import Distillation

    for weight, temperature in ((1.5, 4.0), (-0.1, 4.0), (0.5, 0.0)):
        with pytest.raises(ConfigError, match="Distillation"):
            Distillation(weight, temperature)
    for teacher, distill in ((fresh_model(), None), (None, Distillation(0.5))):
        with pytest.raises(ConfigError, match="give both, or neither"):
            train(fresh_model(), toy_data(), 4, CONFIG, progress=False, teacher=teacher,
                  distill=distill)


def test_mask_gradient_is_the_loss_gradient_with_respect_to_each_layers_mask():
    """Against jax.grad of the loss as a function of one layer's mask alone, for
    every layer, at exact masks (read and unread channels alike)."""
    model = fresh_model()
    data = toy_data(32)
    layers = {name: layer for name, layer in dj.disco_layers(model).items()
              if layer.spec.split_input}
    for index, layer in enumerate(layers.values()):
        layer.mask[...] = dj.topk_mask(
            jax.random.uniform(jax.random.key(index), layer.mask.shape), 2)
    grads = sparsify.mask_gradient(model, data.images, data.labels)
    assert set(grads) == set(layers)
    for name in layers:
        def loss(mask, name=name):
            copy = nnx.clone(model)
            copy.eval()
            dj.disco_layers(copy)[name].mask[...] = mask
            logits = copy(data.images)[:, :4]
            return optax.softmax_cross_entropy_with_integer_labels(logits, data.labels).mean()

        expected = jax.jit(jax.grad(loss))(layers[name].mask[...])
        off = ~np.eye(layers[name].spec.nodes, dtype=bool)
        assert np.abs(np.asarray(expected)[off]).max() > 0, name
        np.testing.assert_allclose(grads[name], expected, rtol=1e-4, atol=1e-7, err_msg=name)


def test_straight_through_masks_are_exact_at_every_step_and_follow_the_gradient():
    data = toy_data()
    model = fresh_model()
    before = {name: np.asarray(layer.mask[...]) for name, layer in dj.disco_layers(model).items()
              if layer.spec.split_input}
    method = sparsify.StraightThroughTopK(comm_ratio=0.25, start=2, end=6, learning_rate=0.1)
    method.update(model, 1, images=data.images[:32], labels=data.labels[:32])
    assert method.scores is None  # before start: nothing
    for name, mask in before.items():
        np.testing.assert_array_equal(dj.disco_layers(model)[name].mask[...], mask)

    method.update(model, 2, images=data.images[:32], labels=data.labels[:32])
    # scores start at the weight norms (largest 1 per pair); one Adam step moves
    # each by the learning rate against the sign of the mask's gradient
    layers = dj.disco_layers(model)
    for name, scores in method.scores.items():
        layer = layers[name]
        norms = sparsify.channel_norms(layer)
        start = norms / norms.max(-1, keepdims=True)
        moved = np.asarray(start - scores)
        off = ~np.eye(layer.spec.nodes, dtype=bool)
        assert np.all(np.abs(np.abs(moved[off]) - 0.1) < 1e-3) or np.all(moved[off] == 0), name
        counts = sparsify.budgets(model)[name]
        assert np.all(counts[off] == dj.k_for_ratio(0.25, layer.spec.group_in)), name

    train(model, data, 4, CONFIG, method=method, progress=False)
    for name, counts in sparsify.budgets(model).items():
        layer = layers[name]
        off = ~np.eye(layer.spec.nodes, dtype=bool)
        assert np.all(counts[off] == dj.k_for_ratio(0.25, layer.spec.group_in)), name
    dj.compile_plan(model)  # an exact mask: a plan compiles


def test_straight_through_needs_the_batch_and_sane_settings():
    from disco_jax.errors import ConfigError

    method = sparsify.StraightThroughTopK(comm_ratio=0.25, start=0, end=4)
    with pytest.raises(ConfigError, match="on the training batch"):
        method.update(fresh_model(), 0)
    with pytest.raises(ConfigError, match="learning_rate"):
        sparsify.StraightThroughTopK(comm_ratio=0.25, start=0, end=4, learning_rate=0.0)
