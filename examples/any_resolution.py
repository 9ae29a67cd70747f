"""Features at any resolution: the APM field between patch centres (offline).

The position code is defined at fractional positions, so an APM can be asked
for a grid `--factor` times denser than its patch grid. This distils a fresh
APM on one photo (or loads `--preset`), evaluates the dense field and draws
it next to bilinear upsampling of the patch grid. Without `--teacher` the
teacher is a random ViT (see overfit_one_image.py).

```shell
python examples/any_resolution.py --image skimage:coffee --factor 4
```
"""

import argparse

from overfit_one_image import add_model_arguments
from overfit_one_image import load_or_distil

from keras_apm import visualize


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="skimage:coffee")
    add_model_arguments(parser, steps=600)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--output", default="any_resolution.png")
    args = parser.parse_args()

    images = [visualize.load_image(args.image)]
    model, converter, inputs, views, _ = load_or_distil(args, images)
    patch = model(inputs)
    # 1024 locations per MLP call: memory stays flat however dense the grid.
    dense = visualize.evaluate_dense(
        model, inputs, args.factor, chunk_size=1024
    )
    rows, rms = visualize.upsample_rows(
        patch, dense, args.factor, views=views, converter=converter
    )
    print(
        f"RMS difference between the field and bilinear upsampling: {rms[0]:.4f}"
    )
    fig = visualize.panel_figure(
        rows, title=f"x{args.factor}: bilinear vs APM field"
    )
    visualize.save_figure(fig, args.output)
    print(f"Wrote {args.output}.")


if __name__ == "__main__":
    main()
