"""Perception tools: islands, overfitting, interpolation, any resolution.

matplotlib, scikit-learn, scikit-image and SciPy (the `keras-apm[examples]`
extra) are imported only inside the functions that use them, so importing
this package costs nothing.

Example:
```python
from keras_apm import visualize

inputs, views = visualize.prepare_images(
    [visualize.load_image("skimage:coffee")], model.image_shape)
out = model(inputs)
fig = visualize.islands_figure(
    [views[0] / 255], [visualize.to_display(out["rgb"][0])],
    [visualize.island_colors(out["features"][0])])
visualize.save_figure(fig, "islands.png")
```
"""

from keras_apm.utils.lazy import lazy_exports

_EXPORTS = {
    "islands_figure": "figures",
    "panel_figure": "figures",
    "save_strip": "figures",
    "figure_to_array": "files",
    "save_figure": "files",
    "save_gif": "files",
    "save_png": "files",
    "load_converter": "images",
    "load_image": "images",
    "prepare_images": "images",
    "to_display": "images",
    "interpolate": "interpolate",
    "interpolation_frames": "interpolate",
    "cluster_palette": "islands",
    "island_colors": "islands",
    "kmeans_colors": "islands",
    "pca_colors": "islands",
    "tsne_colors": "islands",
    "overfit": "overfit",
    "overfit_frames": "overfit",
    "teacher_grids": "overfit",
    "bilinear_upsample": "upsample",
    "dense_locations": "upsample",
    "dense_shape": "upsample",
    "evaluate_dense": "upsample",
    "upsample_rows": "upsample",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
