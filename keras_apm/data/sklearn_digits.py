"""`sklearn_digits`: the 1,797 real handwritten digits of scikit-learn, as TFDS.

scikit-learn bundles the UCI "Optical Recognition of Handwritten Digits" test
set (`sklearn.datasets.load_digits()`): 1,797 grayscale 8x8 images with 17
grey levels (0..16) and labels 0..9. It needs no download, so it is the one
real image data set every machine in this project can build. This module
wraps it as a `tfds.core.GeneratorBasedBuilder` so it behaves like any other
TFDS data set: once this module has been imported (which `import
keras_apm.data` does), `tfds.load("sklearn_digits")` builds it offline in a
few seconds and reads it.

What the builder stores:

- `image`: `(32, 32, 3)` uint8. Grey levels `v` in 0..16 become `v * 255 / 16`,
  the 8x8 image is upscaled 4x with bilinear interpolation (half-pixel
  centres, so no ringing and no value outside 0..255), rounded, and copied
  into three identical channels. 32x32 with patch size 4 gives the 8x8 token
  grid a tiny ViT teacher wants.
- `label`: `ClassLabel(num_classes=10)`, names "0".."9".
- `index`: the row of the example in `load_digits()` (so every example can be
  traced back to the original array).

The split is fixed and stratified: for every class `c` with `n_c` examples,
the indices of that class are permuted with `numpy.random.default_rng(SEED)`
(`SEED = 20241022`; PCG64 streams are stable across NumPy versions) and the
first `t_c` go to `test`, where the `t_c` apportion 360 test examples over
the classes in proportion to `n_c` (largest remainder). That gives exactly
1,437 train and 360 test examples (35-37 test examples per class), and the
same split on every machine. Within each split the examples are ordered by
`index`.
"""

import numpy as np

from keras_apm.utils.optional import require

tf = require("tensorflow", extra="data")
tfds = require("tensorflow_datasets", extra="data")
epath = require("etils.epath", extra="data")  # comes with tfds

NUM_EXAMPLES = 1797
NUM_CLASSES = 10
IMAGE_SIZE = 32
NUM_TRAIN = 1437
NUM_TEST = 360
SEED = 20241022
_MAX_GREY = 16.0


def digits_split_indices():
    """Returns the fixed `(train_indices, test_indices)` into `load_digits()`.

    Both are sorted int64 arrays; together they cover `0..1796` exactly once.

    Example:

    >>> train, test = digits_split_indices()
    >>> len(train), len(test)
    (1437, 360)
    """
    load_digits = require("sklearn.datasets", extra="demo").load_digits

    labels = load_digits().target
    return _split_indices(labels)


def _test_counts(labels):
    # Largest-remainder apportionment of NUM_TEST over the classes, so the
    # split is stratified and the test set has exactly NUM_TEST examples
    # (plain rounding would give 359). Ties go to the smaller class index.
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    quota = counts * NUM_TEST / counts.sum()
    n_test = np.floor(quota).astype(int)
    order = sorted(
        range(NUM_CLASSES), key=lambda c: (-(quota[c] - n_test[c]), c)
    )
    for c in order[: NUM_TEST - int(n_test.sum())]:
        n_test[c] += 1
    return n_test


def _split_indices(labels):
    labels = np.asarray(labels)
    n_test = _test_counts(labels)
    rng = np.random.default_rng(SEED)
    test = []
    # Classes in increasing order so the rng stream is consumed the same
    # way every time.
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[: n_test[c]])
    test = np.sort(np.concatenate(test)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test).astype(np.int64)
    return train, test


def upscale_digits(images):
    """Maps 8x8 grey levels 0..16 to 32x32x3 uint8 images, as the builder does.

    Args:
        images: array of shape `(N, 8, 8)` with values in `[0, 16]`.

    Returns:
        uint8 NumPy array of shape `(N, 32, 32, 3)`.

    Example:

    >>> upscale_digits(np.full((1, 8, 8), 16.0)).max()
    255
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (8, 8):
        raise ValueError(
            "Expected digit images of shape (N, 8, 8). "
            f"Received shape {images.shape}."
        )
    if images.size and (images.min() < 0 or images.max() > _MAX_GREY):
        raise ValueError(
            "Expected grey levels in [0, 16] (as `load_digits()` gives). "
            f"Received values in [{images.min()}, {images.max()}]."
        )
    x = images.astype(np.float32)[..., None] * (255.0 / _MAX_GREY)
    # Bilinear never leaves the input's range (unlike bicubic), so the
    # clip below only guards rounding.
    x = tf.image.resize(x, (IMAGE_SIZE, IMAGE_SIZE), method="bilinear")
    x = np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8)
    return np.repeat(x, 3, axis=-1)


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 1,797 8x8 digits, upscaled to 32x32 RGB, fixed split.

    Builds offline (the data ships with scikit-learn). Splits: `train`
    (1,437 examples) and `test` (360), stratified and seeded; see the module
    docstring for the exact recipe.

    Example:

    ```python
    import keras_apm.data  # registers the builder
    import tensorflow_datasets as tfds

    ds = tfds.load("sklearn_digits", split="test", data_dir="/tmp/tfds")
    ```
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS 4.9 finds a builder's source file through `importlib_resources`,
    # which is only an optional extra of `etils` and is missing from many
    # environments (the lookup then fails with ModuleNotFoundError). We know
    # where this file is, so say it directly; TFDS only uses it to look for a
    # checksums file next to the code, and this builder downloads nothing.
    code_path = epath.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "The 1,797 8x8 handwritten digits bundled with scikit-learn "
                "(UCI optdigits test set), upscaled bilinearly to 32x32 RGB "
                "uint8, with a fixed stratified train/test split."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8
                    ),
                    "label": tfds.features.ClassLabel(
                        names=[str(i) for i in range(NUM_CLASSES)]
                    ),
                    "index": np.int64,
                }
            ),
            supervised_keys=("image", "label"),
            # Keep the examples in `index` order instead of TFDS's key-hash
            # order, so a split reads the same as `load_digits()` rows.
            disable_shuffling=True,
            homepage=(
                "https://scikit-learn.org/stable/modules/generated/"
                "sklearn.datasets.load_digits.html"
            ),
            citation=(
                "@misc{optdigits, author={Alpaydin, E. and Kaynak, C.}, "
                "title={Optical Recognition of Handwritten Digits}, "
                "year={1998}, howpublished={UCI Machine Learning Repository}}"
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: scikit-learn ships the data.
        load_digits = require("sklearn.datasets", extra="demo").load_digits

        digits = load_digits()
        if digits.images.shape != (NUM_EXAMPLES, 8, 8):
            raise ValueError(
                f"Expected load_digits() to give {NUM_EXAMPLES} 8x8 images. "
                f"Received images of shape {digits.images.shape}."
            )
        labels = digits.target.astype(np.int64)
        images = upscale_digits(digits.images)
        train, test = _split_indices(labels)
        return {
            "train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test),
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {
                "image": images[i],
                "label": int(labels[i]),
                "index": int(i),
            }
