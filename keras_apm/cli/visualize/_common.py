"""Arguments and loading shared by the `keras-apm visualize` actions."""

import os

from keras_apm.utils.validation import check_flags
from keras_apm.visualize.islands import METHODS


def add_common_arguments(
    parser, preset_required=True, gif=False, teacher_required=False
):
    parser.add_argument(
        "--preset",
        required=preset_required,
        help="APM preset: built-in name, handle or directory",
    )
    parser.add_argument(
        "--teacher",
        required=teacher_required,
        help="teacher preset (keras-hub ViT, DINOv2, CLIP)",
    )
    parser.add_argument(
        "--image",
        action="append",
        required=True,
        help="image file or skimage:NAME (repeat for several)",
    )
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument(
        "--method", default=METHODS[0], choices=METHODS,
        help="how grid features become island colours"
    )
    parser.add_argument(
        "--clusters", type=int, default=8, help="k-means clusters"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the colouring"
    )
    if gif:
        parser.add_argument(
            "--gif", help="GIF file (default: --output with .gif)"
        )
        parser.add_argument(
            "--no-gif", action="store_true", help="write no GIF"
        )


def check_common(args):
    """Checks the cheap arguments first; returns the images."""
    from keras_apm.visualize import load_image

    if not args.output.lower().endswith(".png"):
        raise ValueError(
            f"--output must be a .png file. Received {args.output!r}."
        )
    check_flags(args, clusters=dict(low=1, integer=True))
    check_output_folder(args.output, "--output")
    return [load_image(spec) for spec in args.image]


def check_output_folder(path, flag):
    """Raises a ValueError, before any work, if `path` cannot be written.

    Its nearest existing folder is tried for real (the command creates the
    missing ones): a read-only folder or mount would otherwise fail only
    when the figure is saved, after the work.
    """
    from keras_apm.utils.files import check_writable_dir

    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    check_writable_dir(folder, f"the folder of {flag} {path!r}")


def coloring(args):
    """The `island_colors` keyword arguments the flags give."""
    return {
        "method": args.method,
        "num_clusters": args.clusters,
        "seed": args.seed,
    }


def gif_path(args):
    if args.no_gif:
        return None
    path = args.gif or os.path.splitext(args.output)[0] + ".gif"
    if not path.lower().endswith(".gif"):
        raise ValueError(f"--gif must be a .gif file. Received {path!r}.")
    check_output_folder(path, "--gif")
    return path


def load_apm(args):
    """`(model, converter, inputs, views)` for the preset and the images."""
    from keras_apm.models.apm import load_apm
    from keras_apm.visualize import prepare_images

    images = check_common(args)
    model, converter = load_apm(args.preset)
    inputs, views = prepare_images(images, model.image_shape, converter)
    return model, converter, inputs, views


def wrote(path, what=""):
    size = os.path.getsize(path) / 1024
    print(f"Wrote {path} ({size:.0f} KB{what}).")
