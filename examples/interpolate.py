"""Interpolate between two photos through their trigger columns (offline).

APM answers every location from the trigger column T and the location alone,
so blending two images' columns, T = (1 - a) T_A + a T_B, and evaluating the
field morphs one percept into the other. Distils a fresh APM on both photos
first (or loads `--preset`); without `--teacher` the teacher is a random ViT
(see overfit_one_image.py).

```shell
python examples/interpolate.py --image-a skimage:chelsea --image-b skimage:coffee
```
"""

import argparse

from overfit_one_image import add_model_arguments
from overfit_one_image import load_or_distil

from keras_apm import visualize


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-a", default="skimage:chelsea")
    parser.add_argument("--image-b", default="skimage:coffee")
    add_model_arguments(parser, steps=600)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--output", default="interpolate.png")
    args = parser.parse_args()

    images = [
        visualize.load_image(args.image_a),
        visualize.load_image(args.image_b),
    ]
    model, converter, inputs, views, _ = load_or_distil(args, images)
    result = visualize.interpolate(model, inputs, num_frames=args.frames)
    strip, gif_frames = visualize.interpolation_frames(
        result, views=views, converter=converter
    )
    png, gif = visualize.save_strip(
        strip,
        args.output,
        args.output.replace(".png", ".gif"),
        title="T = (1 - a) T_A + a T_B",
        gif_frames=gif_frames,
    )
    print(f"Wrote {png} and {gif}.")


if __name__ == "__main__":
    main()
