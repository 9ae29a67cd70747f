"""Islands of agreement: colour feature grids so that similar vectors look alike.

GLOM calls neighbouring locations whose vectors agree an *island*. These
functions turn `(h, w, D)` grids into `(h, w, 3)` RGB in `[0, 1]`:

- `"pca"`: the 3 leading principal components, each scaled to `[0, 1]`;
- `"tsne"`: a 3-D t-SNE embedding, scaled to `[0, 1]`;
- `"kmeans"`: k-means clusters, one distinct colour each.

The colouring is fitted once (on `reference`, default all the grids) and
applied to every grid, so one colour means one kind of vector in every
panel of a figure. scikit-learn does the fitting and matplotlib gives the
palette (the `keras-apm[examples]` extra), both imported on use.
"""

import numpy as np

from keras_apm.utils.optional import require
from keras_apm.utils.validation import check_number
from keras_apm.utils.validation import check_positive_int

METHODS = ("pca", "tsne", "kmeans")


def _as_list(grids, what):
    """A grid or a list of grids -> (list of float32 arrays, was_a_list)."""
    was_list = isinstance(grids, (list, tuple))
    from keras_apm.visualize.images import to_numpy  # Keras: on use only

    arrays = [to_numpy(g) for g in (grids if was_list else [grids])]
    if not arrays:
        raise ValueError(f"Expected at least one grid in `{what}`.")
    for a in arrays:
        if a.ndim < 2 or a.size == 0 or a.shape[-1] != arrays[0].shape[-1]:
            raise ValueError(
                f"Expected `{what}` to be non-empty (..., D) grids of one "
                f"width D. Received shapes {[x.shape for x in arrays]}."
            )
        if not np.isfinite(a).all():
            raise ValueError(
                f"Expected finite values in `{what}`; found NaN/Inf."
            )
    return arrays, was_list


def _rows(arrays):
    return np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays])


def _unflatten(values, arrays):
    """`(N, k)` rows back into the grids' shapes `(..., k)`."""
    splits = np.cumsum([int(np.prod(a.shape[:-1])) for a in arrays])[:-1]
    return [
        v.reshape(a.shape[:-1] + (values.shape[-1],))
        for v, a in zip(np.split(values, splits), arrays)
    ]


def _scale(values, low, high):
    """`[low, high]` -> `[0, 1]` per column, clipped; flat columns -> 0.5."""
    span = high - low
    flat = span <= 1e-8 * np.maximum(1.0, np.abs(high))
    scaled = np.where(flat, 0.5, (values - low) / np.where(flat, 1.0, span))
    return np.clip(scaled, 0.0, 1.0).astype("float32")


def cluster_palette(num_colors):
    """`(num_colors, 3)` distinct RGB colours in `[0, 1]` (matplotlib's).

    `tab10` up to 10 colours, `tab20` up to 20, else evenly spaced `turbo`.

    Example:
    >>> cluster_palette(3).shape
    (3, 3)
    """
    matplotlib = require("matplotlib", extra="visualize")

    if num_colors <= 10:
        colors = matplotlib.colormaps["tab10"].colors[:num_colors]
    elif num_colors <= 20:
        colors = matplotlib.colormaps["tab20"].colors[:num_colors]
    else:
        colors = matplotlib.colormaps["turbo"](np.linspace(0, 1, num_colors))
    return np.asarray(colors, "float32")[:, :3]


def pca_colors(grids, reference=None, percentile=1.0):
    """Colours grids by their 3 leading principal components.

    Each component's colour range runs from the `percentile`-th to the
    `(100 - percentile)`-th percentile of the reference's projections, so a
    few outlying vectors (ViTs have some) do not wash out the rest; values
    outside it are clipped.

    Args:
        grids: a `(..., D)` grid (array or tensor) or a list of them.
        reference: grid(s) to fit the components and ranges on; default
            `grids` (all of them together).
        percentile: float in `[0, 50)`.

    Returns:
        `(..., 3)` float32 RGB in `[0, 1]` (a list for a list).

    Example:
    ```python
    rgb = pca_colors(model(images)["features"][0])  # (h, w, 3)
    ```
    """
    PCA = require("sklearn.decomposition", extra="visualize").PCA

    check_number(percentile, "`percentile`", low=0, high=50, high_open=True)
    arrays, was_list = _as_list(grids, "grids")
    refs = arrays if reference is None else _as_list(reference, "reference")[0]
    _check_width(arrays, refs)
    x = _rows(refs)
    # sklearn fixes the sign of each axis (largest loading positive), so the
    # same features always get the same colours.
    pca = PCA(n_components=min(3, *x.shape), svd_solver="full").fit(x)
    fitted = pca.transform(x)
    low = np.percentile(fitted, percentile, axis=0)
    high = np.percentile(fitted, 100.0 - percentile, axis=0)
    projected = pca.transform(_rows(arrays))
    colors = _scale(projected, low, high)
    # Fewer than 3 components (D < 3 or few vectors): flat extra channels.
    colors = np.pad(
        colors, ((0, 0), (0, 3 - colors.shape[1])), constant_values=0.5
    )
    out = _unflatten(colors, arrays)
    return out if was_list else out[0]


def kmeans_colors(grids, num_clusters=8, reference=None, seed=0):
    """Colours grids by k-means cluster, one palette colour per cluster.

    Clusters are numbered by their size in the reference (largest first), so
    colours do not depend on k-means' arbitrary numbering.

    Args:
        grids: a `(..., D)` grid or a list of them.
        num_clusters: int >= 1.
        reference: grid(s) to fit the clusters on; default `grids`.
        seed: k-means' random state.

    Returns:
        `(colors, labels)`: `(..., 3)` float32 RGB and `(...)` int32 labels
        in `[0, num_clusters)` (lists for a list).

    Example:
    ```python
    rgb, labels = kmeans_colors(grid, num_clusters=5)
    ```
    """
    KMeans = require("sklearn.cluster", extra="visualize").KMeans

    num_clusters = check_positive_int(num_clusters, "num_clusters")
    arrays, was_list = _as_list(grids, "grids")
    refs = arrays if reference is None else _as_list(reference, "reference")[0]
    _check_width(arrays, refs)
    x = _rows(refs)
    distinct = len(np.unique(x, axis=0))
    if distinct < num_clusters:
        raise ValueError(
            f"k-means with {num_clusters} clusters needs as many distinct "
            f"feature vectors; the reference has {distinct}. Use fewer clusters."
        )
    kmeans = KMeans(num_clusters, n_init=4, random_state=int(seed)).fit(x)
    sizes = np.bincount(kmeans.labels_, minlength=num_clusters)
    rank = np.empty(num_clusters, "int32")
    rank[np.argsort(-sizes, kind="stable")] = np.arange(num_clusters)
    labels = rank[kmeans.predict(_rows(arrays))]
    colors = cluster_palette(num_clusters)[labels]
    colors = _unflatten(colors, arrays)
    labels = [l[..., 0] for l in _unflatten(labels[:, None], arrays)]
    return (colors, labels) if was_list else (colors[0], labels[0])


def tsne_colors(grids, seed=0, perplexity=None):
    """Colours grids by a 3-D t-SNE embedding, scaled to `[0, 1]`.

    t-SNE cannot place new points in a fitted embedding: grids that must
    share colours are embedded together (pass them as one list). It is slow:
    seconds for an 8x8 grid, about a minute for 32x32 on a CPU.

    Args:
        grids: a `(..., D)` grid or a list of them.
        seed: t-SNE's random state.
        perplexity: default `min(30, (N - 1) / 3)` for `N` vectors in all.

    Returns:
        `(..., 3)` float32 RGB in `[0, 1]` (a list for a list).

    Example:
    ```python
    rgb = tsne_colors(grid)  # (h, w, 3)
    ```
    """
    TSNE = require("sklearn.manifold", extra="visualize").TSNE

    arrays, was_list = _as_list(grids, "grids")
    x = _rows(arrays)
    if len(x) < 5:
        raise ValueError(
            f"t-SNE needs at least 5 feature vectors. Received {len(x)}."
        )
    if perplexity is None:
        perplexity = min(30.0, (len(x) - 1) / 3.0)
    check_number(
        perplexity, f"`perplexity` (for {len(x)} vectors)", low=0,
        high=len(x), low_open=True, high_open=True,
    )
    embedding = TSNE(
        n_components=3,
        perplexity=perplexity,
        init="pca",
        # Exact gradients are faster than Barnes-Hut's 3-D trees up to a few
        # thousand points (a 32x32 grid still takes about a minute on CPU).
        method="exact" if len(x) <= 4000 else "barnes_hut",
        random_state=int(seed),
    ).fit_transform(x)
    colors = _scale(embedding, embedding.min(axis=0), embedding.max(axis=0))
    out = _unflatten(colors, arrays)
    return out if was_list else out[0]


def _check_width(arrays, refs):
    if refs[0].shape[-1] != arrays[0].shape[-1]:
        raise ValueError(
            f"`reference` has {refs[0].shape[-1]}-d features but `grids` have "
            f"{arrays[0].shape[-1]}-d features."
        )


def island_colors(grids, method="pca", reference=None, num_clusters=8, seed=0):
    """Colours a grid or a list of grids with one shared colouring.

    Pass the teacher's grid as `reference` to watch a student's grid take on
    the teacher's colours, or both ends of an interpolation.

    Args:
        grids: a `(h, w, D)` grid (array or tensor) or a list of them.
        method: `"pca"`, `"tsne"` or `"kmeans"`.
        reference: grid(s) to fit the colouring on (default `grids`). t-SNE
            has no out-of-sample mapping: it embeds `reference` together with
            `grids`.
        num_clusters: clusters of `"kmeans"`.
        seed: random state of `"tsne"` and `"kmeans"`.

    Returns:
        `(h, w, 3)` float32 RGB in `[0, 1]`, or a list of them.

    Example:
    ```python
    frames = island_colors(snapshots, method="kmeans", reference=target)
    ```
    """
    if method == "pca":
        return pca_colors(grids, reference=reference)
    if method == "kmeans":
        return kmeans_colors(
            grids, num_clusters, reference=reference, seed=seed
        )[0]
    if method == "tsne":
        if reference is None:
            return tsne_colors(grids, seed=seed)
        arrays, was_list = _as_list(grids, "grids")
        joint = tsne_colors(
            arrays + _as_list(reference, "reference")[0], seed=seed
        )
        return joint[: len(arrays)] if was_list else joint[0]
    raise ValueError(f"`method` must be one of {METHODS}. Received {method!r}.")
