"""Islands of agreement three ways: PCA, k-means and t-SNE (offline).

Distils a fresh APM on three of scikit-image's photos (or loads `--preset`),
then draws, for each photo: input | RGB decode | islands by PCA, k-means and
t-SNE | the teacher's islands. Without `--teacher` the teacher is a random
ViT (see overfit_one_image.py), so islands follow colour and texture, not
objects.

```shell
python examples/islands.py --steps 600
python examples/islands.py --preset my_apm --teacher my_teacher
```
"""

import argparse

import keras
from overfit_one_image import add_model_arguments
from overfit_one_image import load_or_distil

from keras_apm import visualize

PHOTOS = ("skimage:astronaut", "skimage:chelsea", "skimage:coffee")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_arguments(parser, steps=600)
    parser.add_argument("--output", default="islands.png")
    args = parser.parse_args()

    images = [visualize.load_image(p) for p in PHOTOS]
    model, converter, inputs, views, teacher = load_or_distil(args, images)
    if teacher.grid_shape != model.grid_shape:
        raise SystemExit(
            f"teacher grid {teacher.grid_shape} != APM grid {model.grid_shape}"
        )
    targets = list(visualize.teacher_grids(teacher, views, model.grid_shape))
    out = model(inputs)
    features = list(keras.ops.convert_to_numpy(out["features"]))
    rgb = visualize.to_display(out["rgb"], converter)
    # PCA fitted on the teacher colours student and teacher alike.
    pca = visualize.island_colors(features + targets, "pca", reference=targets)
    kmeans = visualize.island_colors(features, "kmeans", num_clusters=6)
    tsne = visualize.island_colors(features, "tsne")
    rows = [
        [
            (views[i] / 255.0, "input"),
            (rgb[i], "RGB decode"),
            (pca[i], "APM islands, PCA"),
            (kmeans[i], "k-means (6)"),
            (tsne[i], "t-SNE"),
            (pca[len(images) + i], "teacher, PCA"),
        ]
        for i in range(len(images))
    ]
    visualize.save_figure(visualize.panel_figure(rows), args.output)
    print(f"Wrote {args.output}.")


if __name__ == "__main__":
    main()
