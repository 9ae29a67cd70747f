"""Tests for keras_apm.data.corruptions (ImageNet-C / CIFAR-10-C corruptions).

Backend-independent: NumPy/SciPy/Pillow for the corruptions, tf.data for
`corruption_map`.
"""

import doctest

import numpy as np
import pytest

from keras_apm.data import corruptions as C
from keras_apm.data.corruptions import CORRUPTIONS
from keras_apm.data.corruptions import corrupt
from keras_apm.data.corruptions import corruption_map

# Touches no Keras backend: one job of the three runs it (tests/conftest.py).
pytestmark = pytest.mark.backend_independent

SEVERITIES = (1, 2, 3, 4, 5)
RANDOM = tuple(n for n in CORRUPTIONS if n not in C._DETERMINISTIC)


def _astronaut(size):
    from skimage import data
    from skimage import transform

    image = transform.resize(data.astronaut(), (size, size), anti_aliasing=True)
    return np.clip(image * 255.0, 0.0, 255.0).astype(np.float32)


IMAGES = {size: _astronaut(size) for size in (32, 64)}


def _mad(name, severity, image, seed=0, table="cifar10"):
    out = corrupt(image, name, severity, seed=seed, table=table)
    return float(np.abs(out - image).mean())


def _check_output(out, image):
    assert isinstance(out, np.ndarray)
    assert out.shape == image.shape
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 255.0


# ----------------------------------------------------------------------------
# Names and tables.


def test_corruption_names():
    required = {
        "gaussian_noise",
        "shot_noise",
        "impulse_noise",
        "defocus_blur",
        "gaussian_blur",
        "contrast",
        "brightness",
        "saturate",
        "pixelate",
        "jpeg_compression",
        "fog",
        "elastic_transform",
    }
    assert isinstance(CORRUPTIONS, tuple)
    assert len(set(CORRUPTIONS)) == len(CORRUPTIONS) == 15
    assert required <= set(CORRUPTIONS)
    for table in C.TABLES:
        for name in CORRUPTIONS:
            assert len(C._PARAMETERS[table][name]) == 5


def test_tables_match_reference_spot_values():
    # Spot checks against hendrycks/robustness make_cifar_c.py and
    # imagenet_c/corruptions.py.
    cifar, imagenet = C._PARAMETERS["cifar10"], C._PARAMETERS["imagenet"]
    assert cifar["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert imagenet["gaussian_noise"] == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert cifar["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert imagenet["jpeg_compression"] == (25, 18, 15, 10, 7)
    assert cifar["fog_mapsize"] == 32 and imagenet["fog_mapsize"] == 256
    np.testing.assert_allclose(cifar["elastic_transform"][1], (1.6, 6.4, 2.24))
    np.testing.assert_allclose(
        imagenet["elastic_transform"][0], (488.0, 170.8, 24.4)
    )
    # np.arange's floating end point: 7 zoom factors at CIFAR severity 1.
    assert len(np.arange(*cifar["zoom_blur"][0])) == 7


# ----------------------------------------------------------------------------
# Output contract: every corruption x every severity.


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_contract_cifar_table(name, severity):
    for image in IMAGES.values():
        clean = image.copy()
        out = corrupt(image, name, severity, seed=3)
        _check_output(out, image)
        np.testing.assert_array_equal(image, clean)  # input left untouched
        assert np.abs(out - image).mean() > 0.0
        np.testing.assert_array_equal(out, corrupt(image, name, severity, seed=3))
        other = corrupt(image, name, severity, seed=4)
        if name in RANDOM:
            assert not np.array_equal(out, other)
        else:
            np.testing.assert_array_equal(out, other)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_contract_imagenet_table(name):
    for image in IMAGES.values():
        for severity in SEVERITIES:
            out = corrupt(image, name, severity, seed=1, table="imagenet")
            _check_output(out, image)
            np.testing.assert_array_equal(
                out, corrupt(image, name, severity, seed=1, table="imagenet")
            )


@pytest.mark.parametrize("shape", [(1, 1, 3), (17, 23, 3), (5, 40, 3)])
def test_odd_and_non_square_shapes(shape):
    image = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    for name in CORRUPTIONS:
        _check_output(corrupt(image, name, 5, seed=0), image)


def test_float64_and_float16_inputs():
    image = IMAGES[32]
    out32 = corrupt(image, "contrast", 2)
    out64 = corrupt(image.astype(np.float64), "contrast", 2)
    assert out64.dtype == np.float32
    np.testing.assert_array_equal(out32, out64)
    assert corrupt(image.astype(np.float16), "fog", 2).dtype == np.float32


def test_table_changes_result():
    image = IMAGES[32]
    assert _mad("gaussian_blur", 3, image, table="imagenet") > _mad(
        "gaussian_blur", 3, image
    )


# ----------------------------------------------------------------------------
# Severity: mean absolute difference from the clean image.

# Tables that are not monotone in the change they cause (checked below):
# saturate desaturates at 1-2 and over-saturates at 3-5; glass_blur has one
# shuffling pass at 1-3 and two at 4-5 with smaller sigma at 4 than at 3;
# elastic_transform trades affine jitter (decreasing) for local displacement
# (increasing); with the ImageNet table, fog's 256-pixel fractal is cropped
# to the image, so its roughness (not only its strength) changes with
# severity on small images.
NOT_MONOTONE = {"saturate", "glass_blur", "elastic_transform"}


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n not in NOT_MONOTONE])
def test_severity_monotone_cifar_table(name):
    for image in IMAGES.values():
        mads = [_mad(name, s, image) for s in SEVERITIES]
        assert all(b > a for a, b in zip(mads, mads[1:])), mads


@pytest.mark.parametrize(
    "name", [n for n in CORRUPTIONS if n not in NOT_MONOTONE | {"fog"}]
)
def test_severity_monotone_imagenet_table(name):
    for image in IMAGES.values():
        mads = [_mad(name, s, image, table="imagenet") for s in SEVERITIES]
        assert all(b > a for a, b in zip(mads, mads[1:])), mads


def test_saturate_two_regimes():
    image = IMAGES[32]
    saturation = C._rgb_to_hsv(image / 255.0)[..., 1].mean()
    outs = {s: corrupt(image, "saturate", s) for s in SEVERITIES}
    sat = {s: C._rgb_to_hsv(outs[s] / 255.0)[..., 1].mean() for s in SEVERITIES}
    assert sat[2] < sat[1] < saturation < sat[3] < sat[4] < sat[5]
    mads = [_mad("saturate", s, image) for s in SEVERITIES]
    assert mads[0] < mads[1] and mads[2] < mads[3] < mads[4]


def test_glass_blur_two_passes_dominate():
    for image in IMAGES.values():
        mads = [_mad("glass_blur", s, image) for s in SEVERITIES]
        assert max(mads[:3]) < min(mads[3:]), mads


def test_elastic_change_decreases_on_average_cifar_table():
    # CIFAR table: affine jitter 2.56 -> 0.96 px dominates the change on a
    # natural image, so the mean change falls with severity (a documented
    # property of the reference table, not a bug).
    for image in IMAGES.values():
        mads = np.mean(
            [[_mad("elastic_transform", s, image, seed) for s in SEVERITIES]
             for seed in range(8)],
            axis=0,
        )
        assert all(b < a for a, b in zip(mads, mads[1:])), mads


def test_elastic_severity_one_is_affine():
    # CIFAR severity 1 has zero displacement amplitude: only the affine
    # warp, which keeps a linear ramp linear away from the border.
    ramp = np.add.outer(np.arange(32.0), 2.0 * np.arange(32.0))[..., None]
    ramp = np.repeat(ramp * 255.0 / ramp.max(), 3, axis=-1).astype(np.float32)
    out = corrupt(ramp, "elastic_transform", 1, seed=5)
    inner = out[10:22, 10:22, 0].astype(np.float64)
    np.testing.assert_allclose(np.diff(inner, 2, axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.diff(inner, 2, axis=1), 0.0, atol=1e-3)
    assert not np.allclose(out, ramp)
    # Severity 5 adds a non-affine displacement field.
    out5 = corrupt(ramp, "elastic_transform", 5, seed=5)[10:22, 10:22, 0]
    assert np.abs(np.diff(out5.astype(np.float64), 2, axis=0)).max() > 0.1


def test_elastic_affine_direction():
    # All three anchors moved by +2 rows: the image moves down by 2 rows.
    class ShiftRNG:
        def uniform(self, low=0.0, high=1.0, size=None):
            if size == (3, 2):
                return np.tile([2.0, 0.0], (3, 1))
            return np.zeros(size)

    x = np.random.default_rng(0).uniform(size=(16, 16, 3))
    out = C._elastic_transform(x, (0.0, 0.0, 3.0), ShiftRNG())
    np.testing.assert_allclose(out[2:], x[:-2], atol=1e-12)
    # Rows above come from the reflect-101 border, as with OpenCV.
    np.testing.assert_allclose(out[:2], x[2:0:-1], atol=1e-12)


# ----------------------------------------------------------------------------
# Agreement with the reference operations.


def test_hsv_matches_skimage():
    from skimage import color

    rgb = np.random.default_rng(1).uniform(size=(40, 40, 3))
    rgb[0, :, :] = 0.5  # greys
    rgb[1, :, 0] = rgb[1, :, 1]  # ties between maxima
    rgb[2, :, :] = 0.0
    hsv = C._rgb_to_hsv(rgb)
    np.testing.assert_allclose(hsv, color.rgb2hsv(rgb), atol=1e-12)
    np.testing.assert_allclose(C._hsv_to_rgb(hsv), color.hsv2rgb(hsv), atol=1e-12)
    np.testing.assert_allclose(C._hsv_to_rgb(hsv), rgb, atol=1e-12)


@pytest.mark.parametrize("severity", [1, 5])
def test_colour_corruptions_match_skimage_formula(severity):
    from skimage import color

    image = IMAGES[32]
    x = image / 255.0
    hsv = color.rgb2hsv(x)
    c = C._PARAMETERS["cifar10"]["brightness"][severity - 1]
    bright = hsv.copy()
    bright[..., 2] = np.clip(bright[..., 2] + c, 0, 1)
    np.testing.assert_allclose(
        corrupt(image, "brightness", severity),
        np.clip(color.hsv2rgb(bright), 0, 1) * 255,
        atol=1e-3,
    )
    scale, shift = C._PARAMETERS["cifar10"]["saturate"][severity - 1]
    sat = hsv.copy()
    sat[..., 1] = np.clip(sat[..., 1] * scale + shift, 0, 1)
    np.testing.assert_allclose(
        corrupt(image, "saturate", severity),
        np.clip(color.hsv2rgb(sat), 0, 1) * 255,
        atol=1e-3,
    )
    c = C._PARAMETERS["cifar10"]["contrast"][severity - 1]
    mean = x.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(
        corrupt(image, "contrast", severity),
        np.clip((x - mean) * c + mean, 0, 1) * 255,
        atol=1e-3,
    )


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_blur_matches_skimage(severity):
    from skimage.filters import gaussian

    image = IMAGES[32]
    sigma = C._PARAMETERS["cifar10"]["gaussian_blur"][severity - 1]
    expected = np.clip(gaussian(image / 255.0, sigma=sigma, channel_axis=-1), 0, 1)
    np.testing.assert_allclose(
        corrupt(image, "gaussian_blur", severity), expected * 255, atol=1e-3
    )


def test_defocus_kernel():
    for radius, alias in C._PARAMETERS["cifar10"]["defocus_blur"] + C._PARAMETERS[
        "imagenet"
    ]["defocus_blur"]:
        kernel = C._disk_kernel(radius, alias)
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
        if radius < 8:
            np.testing.assert_allclose(kernel.sum(), 1.0, atol=1e-9)
        else:
            # The disk reaches the edge of its grid, and the reference's
            # reflect-101 anti-aliasing folds some mass back in (+1-1.3 %).
            assert 1.005 < kernel.sum() < 1.02
        np.testing.assert_allclose(kernel, kernel.T, atol=1e-15)
        centre = kernel.shape[0] // 2
        assert kernel[centre, centre] == kernel.max()
    # Radius 1.5 covers the 3x3 neighbourhood; radius 0.3 only the centre.
    assert C._disk_kernel(1.5, 0.1).shape == (5, 5)
    assert C._disk_kernel(0.3, 0.4).shape == (3, 3)


def test_plasma_fractal():
    rng = np.random.default_rng(0)
    smooth = C._plasma_fractal(64, 3.0, rng)
    rough = C._plasma_fractal(64, 1.4, np.random.default_rng(0))
    for fractal in (smooth, rough):
        assert fractal.shape == (64, 64)
        assert fractal.min() == 0.0 and fractal.max() == 1.0
    # A smaller decay keeps more fine-scale energy.
    assert np.abs(np.diff(rough, axis=0)).mean() > np.abs(
        np.diff(smooth, axis=0)
    ).mean()


def test_noise_statistics():
    grey = np.full((64, 64, 3), 127.5, dtype=np.float32)
    for severity in (1, 5):
        c = C._PARAMETERS["cifar10"]["gaussian_noise"][severity - 1]
        noise = corrupt(grey, "gaussian_noise", severity, seed=0) - grey
        np.testing.assert_allclose(noise.std(), c * 255, rtol=0.05)
        photons = C._PARAMETERS["cifar10"]["shot_noise"][severity - 1]
        shot = corrupt(grey, "shot_noise", severity, seed=0) / 255.0
        np.testing.assert_allclose(shot.mean(), 0.5, atol=0.01)
        np.testing.assert_allclose(shot.var(), 0.5 / photons, rtol=0.1)
        amount = C._PARAMETERS["cifar10"]["impulse_noise"][severity - 1]
        impulse = corrupt(grey, "impulse_noise", severity, seed=0)
        hit = (impulse == 0.0) | (impulse == 255.0)
        np.testing.assert_allclose(hit.mean(), amount, rtol=0.15)
        assert np.all(impulse[~hit] == 127.5)


def test_impulse_noise_nested_across_severities():
    # One seed reuses its uniform draws, so stronger severities corrupt a
    # superset of the values.
    image = IMAGES[32]
    changed = [corrupt(image, "impulse_noise", s, seed=7) != image for s in SEVERITIES]
    for weak, strong in zip(changed, changed[1:]):
        assert np.all(strong[weak])


def test_jpeg_matches_pillow():
    import io

    from PIL import Image

    image = IMAGES[32]
    buffer = io.BytesIO()
    Image.fromarray(np.round(image).astype(np.uint8)).save(
        buffer, format="JPEG", quality=80
    )
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32)
    np.testing.assert_array_equal(corrupt(image, "jpeg_compression", 1), expected)


def test_pixelate_is_blocky():
    image = IMAGES[32]
    out = corrupt(image, "pixelate", 5)  # 32 -> 20 -> 32
    distinct_rows = len(np.unique(out[:, :, 0], axis=0))
    assert distinct_rows <= 20 < len(np.unique(image[:, :, 0], axis=0))


def test_fog_brightens_and_flattens():
    image = IMAGES[32]
    out = corrupt(image, "fog", 5, seed=0)
    assert out.std() < image.std()


# ----------------------------------------------------------------------------
# Errors.


def test_errors_name_severity_table_seed():
    image = IMAGES[32]
    with pytest.raises(ValueError, match="gaussian_noise, shot_noise"):
        corrupt(image, "motion_blur", 1)
    for severity in (0, 6, 2.5, True, "3"):
        with pytest.raises(ValueError, match="integer in 1..5"):
            corrupt(image, "fog", severity)
    with pytest.raises(ValueError, match="cifar10"):
        corrupt(image, "fog", 1, table="cifar100")
    for seed in (-1, 1.5, "0", None, ()):
        with pytest.raises(ValueError, match="non-negative integer"):
            corrupt(image, "fog", 1, seed=seed)


def test_errors_image():
    image = IMAGES[32]
    with pytest.raises(ValueError, match=r"\(height, width, 3\).*\(32, 32\)"):
        corrupt(image[..., 0], "fog", 1)
    with pytest.raises(ValueError, match=r"\(2, 32, 32, 3\)"):
        corrupt(np.stack([image, image]), "fog", 1)
    with pytest.raises(ValueError, match=r"\(32, 32, 4\)"):
        corrupt(np.concatenate([image, image[..., :1]], -1), "fog", 1)
    with pytest.raises(ValueError, match="dtype uint8"):
        corrupt(image.astype(np.uint8), "fog", 1)
    with pytest.raises(ValueError, match=r"\[0, 255\].*\[-1, "):
        corrupt(image - 1.0, "fog", 1)
    with pytest.raises(ValueError, match=r"256\]"):
        corrupt(np.full((4, 4, 3), 256.0), "fog", 1)
    bad = image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        corrupt(bad, "fog", 1)
    with pytest.raises(ValueError, match="at least one pixel"):
        corrupt(np.zeros((0, 4, 3), np.float32), "fog", 1)


# ----------------------------------------------------------------------------
# tf.data.


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def _dataset(tf, n=6, dtype="float32"):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(n, 32, 32, 3))
    images[0] = IMAGES[32]
    images = images.astype(dtype)
    labels = np.arange(n, dtype=np.int64) * 10
    return images, labels, tf.data.Dataset.from_tensor_slices((images, labels))


@pytest.mark.parametrize("name", ["shot_noise", "fog", "jpeg_compression"])
def test_map_preserves_labels_and_matches_corrupt(tf, name):
    images, labels, ds = _dataset(tf)
    mapped = ds.map(corruption_map(name, 3, seed=11))
    assert mapped.element_spec[0].shape == (32, 32, 3)
    assert mapped.element_spec[0].dtype == tf.float32
    assert mapped.element_spec[1] == ds.element_spec[1]
    first = [(x.numpy(), int(y)) for x, y in mapped]
    second = [(x.numpy(), int(y)) for x, y in mapped]
    for (out, label), (again, _), image, expected_label in zip(
        first, second, images, labels
    ):
        assert label == expected_label
        _check_output(out, image)
        np.testing.assert_array_equal(out, again)
        seed = (11, C._image_digest(image))
        np.testing.assert_array_equal(out, corrupt(image, name, 3, seed=seed))


def test_map_batching_shuffling_and_parallelism_invariant(tf):
    _, _, ds = _dataset(tf)
    fn = corruption_map("gaussian_noise", 5, seed=2)
    reference = {int(y): x.numpy() for x, y in ds.map(fn)}
    batched = ds.batch(4).map(fn, num_parallel_calls=2)
    assert batched.element_spec[0].shape.as_list() == [None, 32, 32, 3]
    for xs, ys in batched:
        for x, y in zip(xs.numpy(), ys.numpy()):
            np.testing.assert_array_equal(x, reference[int(y)])
    shuffled = ds.shuffle(6, seed=0).map(fn, num_parallel_calls=3)
    for x, y in shuffled:
        np.testing.assert_array_equal(x.numpy(), reference[int(y)])
    other_fn = corruption_map("gaussian_noise", 5, seed=3)
    other = {int(y): x.numpy() for x, y in ds.map(other_fn)}
    assert not np.array_equal(other[0], reference[0])
    # Different images get different noise even with one global seed.
    noise = [reference[k] - reference[k].mean() for k in (10, 20)]
    assert not np.array_equal(noise[0], noise[1])


def test_map_uint8_images_only_and_dicts(tf):
    images, labels, _ = _dataset(tf, n=3, dtype="uint8")
    fn = corruption_map("contrast", 2)
    out = next(iter(tf.data.Dataset.from_tensor_slices(images).map(fn)))
    assert out.dtype == tf.float32 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(
        out.numpy(), corrupt(images[0].astype(np.float32), "contrast", 2)
    )
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    element = next(iter(ds.map(fn)))
    assert int(element["label"]) == 0
    np.testing.assert_array_equal(element["image"].numpy(), out.numpy())


def test_map_errors(tf):
    with pytest.raises(ValueError, match="Unknown corruption"):
        corruption_map("frost", 1)
    with pytest.raises(ValueError, match="1..5"):
        corruption_map("fog", 7)
    with pytest.raises(ValueError, match="non-negative integer"):
        corruption_map("fog", 1, seed=-3)
    fn = corruption_map("fog", 1)
    grey = tf.data.Dataset.from_tensor_slices(np.zeros((2, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"\(height, width, 3\)"):
        grey.map(fn)
    rgba = tf.data.Dataset.from_tensor_slices(np.zeros((2, 8, 8, 4), np.float32))
    with pytest.raises(ValueError, match="Received shape"):
        rgba.map(fn)
    text = tf.data.Dataset.from_tensors(tf.fill([8, 8, 3], "a"))
    with pytest.raises(ValueError, match="dtype string"):
        text.map(fn)
    no_image = tf.data.Dataset.from_tensor_slices({"pixels": np.zeros((2, 8, 8, 3))})
    with pytest.raises(ValueError, match="'image' key"):
        no_image.map(fn)
    # Out-of-range values are only seen at run time.
    bright = tf.data.Dataset.from_tensors(np.full((8, 8, 3), 300.0, np.float32))
    with pytest.raises(Exception, match=r"\[0, 255\]"):
        next(iter(bright.map(fn)))


def test_docstring_examples(tf):
    results = doctest.testmod(C, extraglobs={"np": np}, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0 and results.failed == 0
