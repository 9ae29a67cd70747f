"""Perception tools on scikit-image's photos, tiny APMs and tiny random ViTs."""

import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
from presets_factory import save_preset
from presets_factory import tiny_vit
from PIL import Image

import keras_apm
from keras_apm import visualize
from keras_apm.cli import main as cli_main
from keras_apm.teachers import Teacher

PHOTOS = ("skimage:astronaut", "skimage:chelsea", "skimage:coffee")


@pytest.fixture(scope="module")
def photos():
    return [visualize.load_image(p) for p in PHOTOS]


@pytest.fixture(scope="module")
def teacher_preset(tmp_path_factory):
    """A random ViT at 32x32, patch 4 (8x8 grid, 16-d), without class token."""
    backbone = tiny_vit(
        seed=1, patch_size=4, num_layers=1, use_class_token=False
    )
    return save_preset(tmp_path_factory.mktemp("vit"), backbone)


def tiny_apm(**kwargs):
    config = dict(
        image_shape=(32, 32, 3),
        patch_size=4,
        trunk_widths=(32,),
        feature_dim=16,
    )
    config.update(kwargs)
    return keras_apm.APM(**config)


@pytest.fixture(scope="module")
def apm_preset(tmp_path_factory):
    """A random tiny APM (8x8 grid, 16-d) with a BGR, ImageNet converter."""
    keras.utils.set_random_seed(2)
    path = str(tmp_path_factory.mktemp("apm"))
    tiny_apm().save_to_preset(path)
    keras_apm.APMImageConverter(
        (32, 32), scaling="imagenet", channel_order="bgr"
    ).save_to_preset(path)
    return path


# ----------------------------------------------------------------------------
# Images in.


def test_load_image_from_skimage_and_from_a_file(photos, tmp_path):
    chelsea = photos[1]
    assert chelsea.shape == (300, 451, 3) and chelsea.dtype == np.uint8
    path = str(tmp_path / "cat.png")
    Image.fromarray(chelsea).save(path)
    np.testing.assert_array_equal(visualize.load_image(path), chelsea)
    grey = visualize.load_image("skimage:camera")
    assert grey.shape == (512, 512, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


@pytest.mark.parametrize(
    "spec", ["skimage:nothing", "skimage:data_dir", "missing.png"]
)
def test_load_image_rejects_what_is_not_an_image(spec):
    with pytest.raises(ValueError, match="nothing|data_dir|does not exist"):
        visualize.load_image(spec)


def test_prepare_images_and_to_display_undo_the_converter(photos):
    converter = keras_apm.APMImageConverter(
        (32, 48), scaling="unit", channel_order="bgr"
    )
    inputs, views = visualize.prepare_images(photos, (32, 48, 3), converter)
    assert inputs.shape == views.shape == (3, 32, 48, 3)
    assert 0 <= views.min() and views.max() <= 255 and views.max() > 200
    # BGR colours in [0, 1] (what an RGB head predicts) back to RGB.
    np.testing.assert_allclose(
        visualize.to_display(inputs, converter), views / 255.0, atol=1e-5
    )
    # Without a converter: an antialiased resize, scaled by 1 / 255.
    plain, plain_views = visualize.prepare_images(photos[:1], (32, 48, 3))
    np.testing.assert_allclose(plain * 255.0, plain_views, atol=1e-3)
    assert 0 <= plain.min() and plain.max() <= 1
    with pytest.raises(ValueError, match="resizes to"):
        visualize.prepare_images(photos, (64, 64, 3), converter)


# ----------------------------------------------------------------------------
# Islands.


def photo_features(photo, dim=16, seed=0):
    """A (8, 8, dim) grid that is a random linear map of the patch colours."""
    view = visualize.prepare_images([photo], (32, 32, 3))[1]
    colors = view[0].reshape(8, 4, 8, 4, 3).mean(axis=(1, 3)) / 255.0
    mixing = np.random.default_rng(seed).normal(size=(3, dim))
    return colors @ mixing + 0.5, colors


def test_pca_colors_recover_the_structure_of_the_grid(photos):
    grid, colors = photo_features(photos[1])
    islands = visualize.pca_colors(grid, percentile=0.0)
    assert islands.shape == (8, 8, 3) and islands.dtype == np.float32
    assert islands.min() == 0.0 and islands.max() == 1.0
    # The features span the colours' 3-D space, so the PCA colours are an
    # invertible affine map of the patch colours: regress one on the other.
    design = np.concatenate([islands.reshape(-1, 3), np.ones((64, 1))], axis=1)
    target = colors.reshape(-1, 3)
    fit = design @ np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(fit, target, atol=1e-4)
    # Deterministic, and a reference colours other grids alike.
    np.testing.assert_array_equal(
        visualize.pca_colors(grid, percentile=0.0), islands
    )
    shared = visualize.pca_colors(
        [grid, grid[::-1]], reference=grid, percentile=0.0
    )
    np.testing.assert_allclose(shared[1], islands[::-1], atol=1e-6)


def test_pca_colors_of_a_flat_grid_are_grey():
    grey = visualize.pca_colors(np.ones((4, 4, 8)))
    np.testing.assert_allclose(grey, 0.5)


def test_kmeans_colors_label_by_cluster_size(photos):
    grid, _ = photo_features(photos[2])
    colors, labels = visualize.kmeans_colors(grid, num_clusters=4)
    assert colors.shape == (8, 8, 3) and labels.shape == (8, 8)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    sizes = np.bincount(labels.ravel())
    assert list(sizes) == sorted(sizes, reverse=True)
    palette = visualize.cluster_palette(4)
    np.testing.assert_array_equal(colors, palette[labels])
    assert len(np.unique(palette, axis=0)) == 4
    assert visualize.cluster_palette(30).shape == (30, 3)
    with pytest.raises(ValueError, match="distinct"):
        visualize.kmeans_colors(np.zeros((4, 4, 3)), num_clusters=2)


def test_tsne_colors_span_the_unit_cube(photos):
    grid, _ = photo_features(photos[0])
    a, b = visualize.tsne_colors([grid, grid[:4]])
    assert a.shape == (8, 8, 3) and b.shape == (4, 8, 3)
    both = np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)])
    np.testing.assert_allclose(both.min(0), 0.0)
    np.testing.assert_allclose(both.max(0), 1.0)


def test_island_colors_check_their_input():
    grid = np.random.default_rng(0).normal(size=(4, 4, 8))
    with pytest.raises(ValueError, match="method"):
        visualize.island_colors(grid, method="umap")
    with pytest.raises(ValueError, match="8-d"):
        visualize.island_colors(grid, reference=grid[..., :4])
    with pytest.raises(ValueError, match="NaN"):
        visualize.island_colors(np.full((4, 4, 8), np.nan))


# ----------------------------------------------------------------------------
# Any resolution.


def test_bilinear_upsample_is_exact_on_a_ramp():
    ys, xs = np.meshgrid(np.arange(5.0), np.arange(7.0), indexing="ij")
    ramp = np.stack([2 * ys + xs, ys - 3 * xs], axis=-1)
    up = visualize.bilinear_upsample(ramp, 4)
    assert up.shape == (17, 25, 2) == visualize.dense_shape((5, 7), 4) + (2,)
    locations = visualize.dense_locations((5, 7), 4)
    y, x = locations[:, 0], locations[:, 1]
    expected = np.stack([2 * y + x, y - 3 * x], axis=-1).reshape(17, 25, 2)
    np.testing.assert_allclose(up, expected, atol=1e-5)
    np.testing.assert_allclose(up[::4, ::4], ramp, atol=1e-6)


def test_dense_field_meets_the_patch_grid(photos):
    model = tiny_apm()
    inputs, views = visualize.prepare_images(photos[:2], model.image_shape)
    dense = visualize.evaluate_dense(model, inputs, 3, chunk_size=None)
    assert dense["features"].shape == (2, 22, 22, 16)
    assert dense["rgb"].shape == (2, 22, 22, 3) and dense["rgb"].min() >= 0
    patch = model(inputs)
    np.testing.assert_allclose(
        dense["features"][:, ::3, ::3],
        keras.ops.convert_to_numpy(patch["features"]),
        atol=1e-4,
    )
    rows, rms = visualize.upsample_rows(patch, dense, 3, views=views)
    assert len(rows) == 4 and len(rms) == 2 and all(r > 0 for r in rms)
    assert rows[1][3][0].shape == (22, 22, 3)


# ----------------------------------------------------------------------------
# Interpolation.


def test_interpolation_ends_are_the_two_images(photos):
    model = tiny_apm()
    inputs, views = visualize.prepare_images(photos[1:], model.image_shape)
    out = visualize.interpolate(model, inputs, num_frames=5)
    np.testing.assert_allclose(out["alphas"], [0, 0.25, 0.5, 0.75, 1])
    assert out["features"].shape == (5, 8, 8, 16) and out["rgb"].shape == (
        5,
        8,
        8,
        3,
    )
    own = keras.ops.convert_to_numpy(model(inputs)["features"])
    np.testing.assert_allclose(out["features"][[0, -1]], own, atol=1e-4)
    strip, gif = visualize.interpolation_frames(
        out, views=views, method="kmeans"
    )
    assert len(strip) == 7 and len(gif) == 5
    assert strip[0][0][1] == "image A" and gif[-1][0][1].endswith("(B)")
    with pytest.raises(ValueError, match=">= 2"):
        visualize.interpolate(model, inputs, num_frames=1)
    with pytest.raises(ValueError, match=r"\(2, H, W, C\)"):
        visualize.interpolate(model, inputs[:1])


# ----------------------------------------------------------------------------
# Overfitting.


def test_overfit_lowers_the_loss_and_leaves_the_global_head(
    photos, teacher_preset
):
    keras.utils.set_random_seed(3)
    model = tiny_apm(global_head=True, global_num_heads=2)
    teacher = Teacher.from_preset(teacher_preset)
    _, views = visualize.prepare_images(photos[:1], model.image_shape)
    targets = visualize.teacher_grids(teacher, views, model.grid_shape)
    assert targets.shape == (1, 8, 8, 16)
    pool = [w.copy() for w in model.global_pool.get_weights()]
    snapshots = visualize.overfit(
        model, views, targets, steps=25, every=10, learning_rate=3e-3
    )
    assert [s["step"] for s in snapshots] == [0, 10, 20, 25]
    assert snapshots[-1]["loss"] < 0.8 * snapshots[0]["loss"]
    last = snapshots[-1]
    assert (
        last["features"].shape == (1, 8, 8, 16) and last["rgb_loss"] is not None
    )
    np.testing.assert_allclose(
        last["loss"], last["features_loss"] + last["rgb_loss"], rtol=1e-5
    )
    np.testing.assert_allclose(
        last["features_loss"],
        np.mean((last["features"] - targets) ** 2),
        rtol=1e-4,
    )
    for before, after in zip(pool, model.global_pool.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert model.global_pool.trainable
    frames = visualize.overfit_frames(snapshots, targets, views=views)
    assert len(frames) == 5 and [p[1] for p in frames[-1]] == [
        "teacher",
        "input",
    ]
    assert frames[0][0][1] == f"step 0, loss {snapshots[0]['loss']:.3g}"
    with pytest.raises(ValueError, match="grid.* must have shape"):
        visualize.overfit(model, views, targets[..., :8], steps=1)


# ----------------------------------------------------------------------------
# Figures and files.


def test_strip_writes_a_png_and_a_gif_of_all_frames(tmp_path):
    rng = np.random.default_rng(0)
    frames = [
        [(rng.uniform(size=(8, 8, 3)), f"step {k}"), None] for k in range(3)
    ]
    frames[1][1] = (rng.uniform(size=(8, 8, 3)), "rgb")
    png, gif = visualize.save_strip(
        frames, tmp_path / "s.png", tmp_path / "s.gif", title="t"
    )
    with Image.open(png) as strip:
        # Three frames of two panels: 3 x 2 cells of 220 px plus the title.
        assert strip.size == (660, 480)
    with Image.open(gif) as animation:
        # One frame a row: its two panels side by side, under the title.
        assert animation.n_frames == 3 and animation.size == (440, 260)
    assert sorted(os.listdir(tmp_path)) == ["s.gif", "s.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(png).st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        visualize.panel_figure([[(np.zeros((8, 8)), "flat")]])
    with pytest.raises(ValueError, match=".png"):
        visualize.save_png(np.zeros((4, 4, 3)), tmp_path / "x.jpg")


def test_importing_keras_apm_needs_no_plotting_library():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("backend-independent; checked once, in the fastest suite")
    # Keras itself may import matplotlib or scikit-learn when they are
    # installed, so import keras first, then make those libraries unimportable.
    code = """
import sys, keras, keras_hub
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("matplotlib", "sklearn", "skimage", "scipy", "PIL"):
            raise ImportError(f"blocked {name}")
for name in list(sys.modules):
    if name.split(".")[0] in ("matplotlib", "sklearn", "skimage", "PIL"):
        del sys.modules[name]
sys.meta_path.insert(0, Block())
import keras_apm
from keras_apm import visualize
from keras_apm.cli.visualize import add_parser
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


# ----------------------------------------------------------------------------
# The command line.


def run_cli(*args):
    return cli_main(["visualize", *args])


def test_cli_overfit_writes_strip_gif_and_preset(
    tmp_path, teacher_preset, capsys
):
    out = tmp_path / "overfit.png"
    code = run_cli(
        "overfit", "--teacher", teacher_preset, "--image", PHOTOS[0],
        "--steps", "4", "--every", "2", "--trunk-widths", "16",
        "--output", str(out), "--save-preset", str(tmp_path / "apm"),
    )  # fmt: skip
    assert code == 0
    with Image.open(out) as strip:
        assert strip.size == (4 * 220, 2 * 220 + 40)  # steps 0, 2, 4 + teacher
    with Image.open(tmp_path / "overfit.gif") as animation:
        assert animation.n_frames == 4
    assert "step     4" in capsys.readouterr().out
    model = keras_apm.APM.from_preset(str(tmp_path / "apm"))
    assert model.grid_shape == (8, 8) and model.feature_dim == 16


@pytest.mark.parametrize("method", ["pca", "kmeans"])
def test_cli_islands(tmp_path, apm_preset, teacher_preset, method):
    out = tmp_path / "islands.png"
    code = run_cli(
        "islands", "--preset", apm_preset, "--teacher", teacher_preset,
        "--image", PHOTOS[1], "--image", PHOTOS[2], "--method", method,
        "--clusters", "4", "--output", str(out),
    )  # fmt: skip
    assert code == 0
    with Image.open(out) as figure:
        assert figure.size == (4 * 220, 2 * 220 + 40)


def test_cli_interpolate_and_upsample(tmp_path, apm_preset):
    code = run_cli(
        "interpolate", "--preset", apm_preset, "--image", PHOTOS[0],
        "--image", PHOTOS[2], "--frames", "3", "--output", str(tmp_path / "i.png"),
    )  # fmt: skip
    assert code == 0
    with Image.open(tmp_path / "i.gif") as animation:
        assert animation.n_frames == 3
    with Image.open(tmp_path / "i.png") as strip:
        assert strip.size == (5 * 220, 2 * 220 + 40)
    code = run_cli(
        "upsample", "--preset", apm_preset, "--image", PHOTOS[2], "--factor", "2",
        "--output", str(tmp_path / "u.png"),
    )  # fmt: skip
    assert code == 0
    with Image.open(tmp_path / "u.png") as figure:
        assert figure.size == (4 * 220, 2 * 220 + 40)
    assert sorted(os.listdir(tmp_path)) == ["i.gif", "i.png", "u.png"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["interpolate", "--image", PHOTOS[0]], "exactly two"),
        (["upsample", "--image", PHOTOS[0], "--factor", "0"], "--factor"),
        (["islands", "--image", "skimage:nothing"], "no bundled image"),
    ],
)
def test_cli_reports_bad_input(tmp_path, apm_preset, capsys, args, message):
    code = run_cli(
        *args, "--preset", apm_preset, "--output", str(tmp_path / "x.png")
    )
    assert code == 2
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_cli_overfit_needs_a_teacher(tmp_path, capsys):
    code = run_cli(
        "overfit", "--image", PHOTOS[0], "--output", str(tmp_path / "x.png")
    )
    assert code == 2 and "--teacher" in capsys.readouterr().err
