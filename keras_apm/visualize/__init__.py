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

from keras_apm.visualize.figures import islands_figure
from keras_apm.visualize.figures import panel_figure
from keras_apm.visualize.figures import save_strip
from keras_apm.visualize.files import figure_to_array
from keras_apm.visualize.files import save_figure
from keras_apm.visualize.files import save_gif
from keras_apm.visualize.files import save_png
from keras_apm.visualize.images import load_converter
from keras_apm.visualize.images import load_image
from keras_apm.visualize.images import prepare_images
from keras_apm.visualize.images import to_display
from keras_apm.visualize.interpolate import interpolate
from keras_apm.visualize.interpolate import interpolation_frames
from keras_apm.visualize.islands import cluster_palette
from keras_apm.visualize.islands import island_colors
from keras_apm.visualize.islands import kmeans_colors
from keras_apm.visualize.islands import pca_colors
from keras_apm.visualize.islands import tsne_colors
from keras_apm.visualize.overfit import overfit
from keras_apm.visualize.overfit import overfit_frames
from keras_apm.visualize.overfit import teacher_grids
from keras_apm.visualize.upsample import bilinear_upsample
from keras_apm.visualize.upsample import dense_locations
from keras_apm.visualize.upsample import dense_shape
from keras_apm.visualize.upsample import evaluate_dense
from keras_apm.visualize.upsample import upsample_rows
