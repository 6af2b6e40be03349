"""Super-resolution: the sub-pixel upsampler, the EDSR network on a mesh,
the task's metrics, the photographs, and `python -m experiments.super_resolution`
end to end on its --quick settings."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import relative_error

import disco_jax as dj
from disco_jax import photos
from disco_jax.data import DataError, Split
from disco_jax.layers import PixelShuffle
from disco_jax.models import EDSR, SwinIR
from disco_jax.models.edsr import ResidualBlock
from disco_jax.tasks import SuperResolution


def test_pixel_shuffle_puts_channel_c_r2_plus_i_r_plus_j_at_pixel_i_j_of_channel_c():
    r, channels = 2, 3
    x = jax.random.normal(jax.random.key(0), (2, 4, 5, channels * r * r))
    y = np.asarray(PixelShuffle(r)(x))
    assert y.shape == (2, 8, 10, channels)
    for c in range(channels):
        for i in range(r):
            for j in range(r):
                np.testing.assert_array_equal(y[:, i::r, j::r, c], x[..., c * r * r + i * r + j])


@pytest.mark.parametrize("nodes", [2, 4])
def test_pixel_shuffle_of_each_nodes_block_is_that_nodes_part_of_the_whole(nodes):
    """With whole r^2 groups per node, shuffling each node's block on its own
    gives the node's channels of the global shuffle: nothing travels."""
    r, per_node = 3, 2
    x = jax.random.normal(jax.random.key(1), (1, 3, 3, nodes * per_node * r * r))
    whole = PixelShuffle(r, nodes)(x)
    blocks = jnp.split(x, nodes, axis=-1)
    local = jnp.concatenate([PixelShuffle(r, nodes).inference_form(nodes, "s")(b)
                             for b in blocks], -1)
    np.testing.assert_array_equal(local, whole)


def test_sub_pixel_groups_that_would_straddle_two_nodes_are_refused_by_value():
    x = jnp.zeros((1, 2, 2, 12))  # 3 groups of 4 over 2 nodes: node 0 would hold 1.5
    with pytest.raises(dj.ConfigError, match="up: x2 .* 6 channels must be whole groups of 4"):
        PixelShuffle(2, 2, name="up")(x)
    with pytest.raises(dj.ConfigError, match="EDSR width 6 does not divide over 4 nodes"):
        EDSR(scale=2, width=6, blocks=1, nodes=4, rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match=r"EDSR upscales by one of \[2, 3, 4\], not 5"):
        EDSR(scale=5, width=8, blocks=1, rngs=nnx.Rngs(0))


def _on_mesh(model, x, nodes, channels):
    distributed = dj.DistributedModel(model, dj.make_mesh(nodes), output_rank=4,
                                      output_channels=channels)
    compiled = distributed.compile(x)
    out = distributed.outputs(compiled(*distributed.inputs(x)))
    hlo = compiled.as_text()
    assert dj.hlo_other_collectives(hlo) == []
    per_image = dj.model_costs(model, x.shape).totals["disco"].comm_bytes
    assert dj.hlo_comm_bytes(hlo) == per_image * x.shape[0]
    return out


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_residual_blocks_run_on_a_mesh_like_on_one_device(nodes):
    class Blocks(nnx.Module):
        def __init__(self):
            self.head = dj.DiscoConv(3, 16, 3, nodes=nodes, split_input=False, rngs=nnx.Rngs(0))
            self.blocks = nnx.List([ResidualBlock(16, nodes=nodes, res_scale=0.5,
                                                  name=f"b{i}", rngs=nnx.Rngs(i))
                                    for i in range(2)])

        def __call__(self, x):
            y = self.head(x)
            for block in self.blocks:
                y = block(y)
            return y

    model = Blocks()
    dj.set_random_masks(model, jax.random.key(0), 0.5)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    assert relative_error(_on_mesh(model, x, nodes, 16), model(x)) <= 1e-4


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_edsr_runs_on_a_mesh_like_on_one_device(nodes, scale):
    model = EDSR(scale=scale, width=16, blocks=2, nodes=nodes, rngs=nnx.Rngs(0))
    dj.set_random_masks(model, jax.random.key(0), 0.5)  # k = 2 of 4 channels at N = 4
    x = jax.random.uniform(jax.random.key(1), (2, 10, 7, 3))
    reference = model(x)[..., :3]
    assert reference.shape == (2, 10 * scale, 7 * scale, 3)
    assert relative_error(_on_mesh(model, x, nodes, 3), reference) <= 1e-4


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_swinir_runs_on_a_mesh_like_on_one_device(nodes, scale):
    """Shifted windows, heads split over nodes, LayerNorm statistics by psum
    (their bytes in the plan's count and in the HLO alike)."""
    model = SwinIR(scale=scale, dim=16, groups=1, depth=2, heads=4, window=4, nodes=nodes,
                   rngs=nnx.Rngs(0))
    dj.set_random_masks(model, jax.random.key(0), 0.5)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 12, 3))
    reference = model(x)[..., :3]
    assert reference.shape == (2, 8 * scale, 12 * scale, 3)
    assert relative_error(_on_mesh(model, x, nodes, 3), reference) <= 1e-4


def test_swinir_refuses_what_does_not_split_or_cut_into_windows():
    with pytest.raises(dj.ConfigError, match="SwinIR dim 16 and heads 3 must divide over 2"):
        SwinIR(dim=16, heads=3, groups=1, depth=2, nodes=2, rngs=nnx.Rngs(0))
    model = SwinIR(dim=8, heads=2, groups=1, depth=2, window=4, rngs=nnx.Rngs(0))
    with pytest.raises(dj.ConfigError, match="SwinIR input 6 x 8 does not cut into 4 x 4"):
        model(jnp.zeros((1, 6, 8, 3)))


def test_an_untrained_edsr_is_the_bicubic_upscaling_plus_what_its_tail_adds():
    """The skip reads the bicubic upscaling through the identity: with the
    tail zeroed the network's output is bicubic upscaling exactly."""
    model = EDSR(scale=2, width=8, blocks=1, rngs=nnx.Rngs(0))
    model.tail.kernel[...] = jnp.zeros_like(model.tail.kernel[...])
    x = jax.random.uniform(jax.random.key(1), (1, 6, 6, 3))
    np.testing.assert_allclose(model(x), jax.image.resize(x, (1, 12, 12, 3), "bicubic"),
                               atol=1e-6)


def test_psnr_is_on_the_y_channel_with_the_border_cropped():
    task = SuperResolution(3, scale=2)
    target = np.full((1, 16, 16, 3), 128 / 255, np.float32)
    off_by_one = target + np.float32(1 / 255)  # every 8-bit value one level up
    # Y = 16 + 219 g / 255 for grey g: one level of g is 219/255 of Y
    expected = 20 * np.log10(255 / (219 / 255))
    metrics = task.image_metrics(off_by_one, target)
    assert metrics["psnr"] == pytest.approx(expected, abs=1e-6)
    assert 0.99 < metrics["ssim"] <= 1.0
    border_only = target.copy()
    border_only[:, :2] = 0.0  # wrong only within the 2 px border PSNR crops
    assert task.image_metrics(border_only, target)["psnr"] == np.inf


def test_the_mesh_is_compared_with_the_reference_in_8_bit_values():
    task = SuperResolution(3, scale=2)
    reference = np.full((1, 4, 4, 3), 100.5 / 255)  # exactly on a rounding boundary
    nudged = reference + 1e-7
    values, differ, ties = task.agreement(nudged, reference, 1e-6)
    assert (values, differ, ties) == (48, 48, 48)  # rounds the other way: all ties
    inside = np.full((1, 4, 4, 3), 100.2 / 255)  # far from a boundary
    far = inside + 3 / 255
    assert task.agreement(far, inside, 1e-6)[1:] == (48, 0)  # errors, not ties
    mse = task.versus_reference({"images": far}, {"images": inside})
    assert mse["psnr_vs_reference"] == pytest.approx(20 * np.log10(255 / 3), abs=1e-6)


def test_bad_super_resolution_data_is_refused_by_value():
    task = SuperResolution(3, scale=2)
    with pytest.raises(DataError, match=r"x2 of inputs \(1, 8, 8, 3\) needs targets "
                                        r"\(1, 16, 16, 3\), got \(1, 32, 32, 3\)"):
        task.check(Split(np.zeros((1, 8, 8, 3)), np.zeros((1, 32, 32, 3))))
    with pytest.raises(dj.ConfigError, match="scale must be an integer >= 2, got 1"):
        SuperResolution(3, scale=1)
    with pytest.raises(DataError, match="coffee is 100 x 150 px at 1/4 scale, smaller than a "
                                        "160 px training patch"):
        photos.load_dataset(4, 160, 8, train=("coffee",))
    with pytest.raises(DataError, match=r"both trained and tested on: \['camera'\]"):
        photos.load_dataset(2, 8, 8, train=("camera",))
    with pytest.raises(DataError, match="share one size"):
        photos.load_dataset(2, 8, 8, test=("camera", "coffee"), train=("brick",))


def test_photographs_are_split_by_image_and_patches_are_aligned():
    data = photos.load_dataset(2, 16, 12, train=("chelsea", "coffee"))
    assert not set(photos.TEST_PHOTOS) & set(photos.TRAIN_PHOTOS)
    assert data.test.images.shape == (4, 256, 256, 3)
    assert data.test.labels.shape == (4, 512, 512, 3)
    assert data.image_shape == (256, 256, 3) and data.classes == 3
    low, high = data.train.images, data.train.labels
    assert low.shape == (12, 16, 16, 3) and high.shape == (12, 32, 32, 3)
    assert 0.0 <= float(high.min()) and float(high.max()) <= 1.0
    # each low-resolution patch is the downscaling of its high-resolution patch
    # (away from the patch's edge, where the whole image's neighbours count)
    again = photos.downscale(high, 2)
    np.testing.assert_allclose(again[:, 3:-3, 3:-3], low[:, 3:-3, 3:-3], atol=1e-5)
    np.testing.assert_array_equal(photos.load_dataset(2, 16, 12, train=("chelsea", "coffee"))
                                  .train.images, low)  # the same patches every time


@pytest.fixture(scope="module", params=["edsr", "swinir"])
def quick_run(request, tmp_path_factory):
    from experiments import super_resolution

    return helpers.quick_run(super_resolution.main, tmp_path_factory.mktemp(request.param),
                             "--model", request.param)


@pytest.mark.slow
def test_quick_super_resolution_run_passes_its_checks_value_by_value(quick_run):
    from experiments import super_resolution

    code, report, _ = quick_run
    assert code == 0 and super_resolution.verified(report)
    assert report["model"] in ("edsr", "swinir")
    assert report["task"] == "super_resolution" and report["quality"]["metric"] == "psnr"
    assert report["metric_unit"] == "dB" and report["metric_scale"] == 1.0
    dist = report["distributed"]
    assert dist["positions"] == 4 * 512 * 512 * 3  # every 8-bit value of the test images
    assert dist["prediction_mismatches"] == dist["mismatches_that_are_ties"]
    assert dist["versus_reference"]["psnr_vs_reference"] > 60
    assert set(dist["metrics"]) == {"psnr", "ssim"}
    assert 25 < report["baselines"]["bicubic"]["psnr"] < 45
    comm = report["comm_bytes_per_sample"]
    assert comm["disco_hlo"] == comm["disco"] > 0
    names = [path.rsplit("/", 1)[-1] for path in report["plots"]]
    assert names == ["bytes_per_layer.png", "examples.png"]


def test_a_scale_the_network_does_not_build_and_another_dataset_are_refused(tmp_path, capsys):
    from experiments import super_resolution

    with pytest.raises(SystemExit):
        super_resolution.main(["--quick", "--scale", "5", "--out", str(tmp_path / "a")])
    assert "--scale: invalid choice: 5" in capsys.readouterr().err
    out = tmp_path / "run"
    assert super_resolution.main(["--quick", "--dataset", "fashion_mnist", "--out",
                                  str(out)]) == 2
    assert "super-resolution runs on --dataset skimage_photos" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_infer_runs_a_saved_super_resolution_run_on_whole_images(quick_run, tmp_path, capsys):
    from experiments import infer

    _, report, folder = quick_run
    capsys.readouterr()
    out = tmp_path / "mesh.npz"
    assert infer.main(["--run", str(folder / "run"), "--predictions", str(out)]) == 0
    mesh = report["distributed"]["metrics"]
    assert (f"PSNR {mesh['psnr']:.2f}, ssim {mesh['ssim']:.2f} over 4 test images"
            in capsys.readouterr().out)
    saved = np.load(out)
    assert saved["logits"].shape == (4, 512, 512, 3)
