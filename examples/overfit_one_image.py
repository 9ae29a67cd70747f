"""Overfit a fresh APM on one photo and watch its islands form (offline).

The paper's islands-over-iterations figure: a fresh APM is distilled on one
image's teacher grid, and its grid is coloured every few steps by a PCA
fitted on the teacher's grid, so its colours converge to the teacher's.

Without `--teacher`, the teacher is a small keras-hub ViT with *random*
weights (no pretrained weights can be downloaded here): its patch embedding
still maps similar patches to similar tokens, so its grid carries the image's
structure, but not semantics. Pass a real teacher preset for the real thing.

```shell
python examples/overfit_one_image.py --image skimage:astronaut --steps 300
```
"""

import argparse

import keras
import keras_hub

import keras_apm
from keras_apm import visualize
from keras_apm.models.apm import load_apm
from keras_apm.models.apm.apm_student import default_student_config
from keras_apm.models.apm.apm_student import load_teacher
from keras_apm.teachers import ViTTeacher


def random_vit_teacher(size=224, patch=14, seed=0):
    """A 2-layer, 64-wide ViT with random weights, as a teacher."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3),
        patch_size=patch,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        use_class_token=False,
    )
    return ViTTeacher(backbone)


def add_model_arguments(parser, steps):
    parser.add_argument(
        "--preset", help="a distilled APM (default: distil one here)"
    )
    parser.add_argument(
        "--teacher", help="teacher preset (default: random ViT)"
    )
    parser.add_argument("--steps", type=int, default=steps)


def load_teacher_arg(args):
    """`--teacher`'s preset, else the random ViT."""
    return load_teacher(args.teacher) if args.teacher else random_vit_teacher()


def fresh_apm(teacher):
    """A fresh APM reading the teacher's input size and patch, its width
    (the distillation student, sigmoid RGB head, no global head)."""
    config = default_student_config(
        teacher, trunk_widths=(512, 512), global_head=False
    )
    return keras_apm.APM(**config)


def load_or_distil(args, images):
    """`(model, converter, inputs, views, teacher)`: `--preset`, or a fresh
    APM distilled on `images` for `--steps` steps."""
    teacher = load_teacher_arg(args)
    if args.preset:
        model, converter = load_apm(args.preset)
    else:
        model, converter = fresh_apm(teacher), None
    inputs, views = visualize.prepare_images(
        images, model.image_shape, converter
    )
    if not args.preset:
        targets = visualize.teacher_grids(teacher, views, model.grid_shape)
        snapshots = visualize.overfit(
            model, views, targets, steps=args.steps, every=args.steps
        )
        print(
            f"distilled: loss {snapshots[0]['loss']:.3f} -> {snapshots[-1]['loss']:.3f}"
        )
    return model, converter, inputs, views, teacher


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", default="skimage:astronaut")
    parser.add_argument(
        "--teacher", help="teacher preset (default: random ViT)"
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=60)
    parser.add_argument("--output", default="overfit.png")
    args = parser.parse_args()

    teacher = load_teacher_arg(args)
    model = fresh_apm(teacher)
    _, views = visualize.prepare_images(
        [visualize.load_image(args.image)], model.image_shape
    )
    targets = visualize.teacher_grids(teacher, views, model.grid_shape)
    snapshots = visualize.overfit(
        model, views, targets, steps=args.steps, every=args.every
    )
    for s in snapshots:
        print(f"step {s['step']:4d}  loss {s['loss']:.4f}")
    frames = visualize.overfit_frames(snapshots, targets, views=views)
    png, gif = visualize.save_strip(
        frames,
        args.output,
        args.output.replace(".png", ".gif"),
        title="islands of a fresh APM, coloured by the teacher's PCA",
    )
    print(f"Wrote {png} and {gif}.")


if __name__ == "__main__":
    main()
