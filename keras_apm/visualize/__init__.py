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

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    """
    figures: islands_figure panel_figure save_strip
    files: figure_to_array save_figure save_gif save_png
    images: load_image prepare_images to_display
    interpolate: interpolate interpolation_frames
    islands: cluster_palette island_colors kmeans_colors pca_colors tsne_colors
    overfit: overfit overfit_frames teacher_grids
    upsample: bilinear_upsample dense_locations dense_shape evaluate_dense upsample_rows
""",
)
