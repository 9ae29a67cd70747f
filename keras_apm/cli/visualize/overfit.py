"""Distils a fresh APM on the teacher's grid of one image (or a few) and
writes its islands every --every steps as a PNG strip and a GIF, each panel
titled with the loss at that step.

The fresh APM has --preset's architecture (new weights), or is built from
the flags: by default the teacher's input size and patch size (so the grids
match), the teacher's width, a --trunk-widths MLP and a sigmoid RGB head.
"""

import os

from keras_apm.cli.visualize import _common

HELP = "distil a fresh APM on one image; islands every N steps"


def add_arguments(parser):
    _common.add_common_arguments(
        parser, preset_required=False, gif=True, teacher_required=True
    )
    parser.add_argument(
        "--steps", type=int, default=300, help="optimizer steps"
    )
    parser.add_argument(
        "--every", type=int, default=50, help="steps between frames"
    )
    parser.add_argument(
        "--learning-rate", type=float, default=1e-3, help="Adam learning rate"
    )
    parser.add_argument(
        "--rgb-weight", type=float, help="default 1 with an RGB head"
    )
    parser.add_argument("--image-size", type=int, help="default: the teacher's")
    parser.add_argument("--patch-size", type=int, help="default: the teacher's")
    parser.add_argument(
        "--trunk-widths", default="512,512", help="comma-separated MLP widths"
    )
    parser.add_argument(
        "--save-preset", help="also save the overfitted APM here"
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing --save-preset",
    )


def _fresh_apm(args, teacher):
    """A fresh APM and its image converter: the preset's or the flags'."""
    import keras

    from keras_apm import APM
    from keras_apm.models.apm import load_apm
    from keras_apm.models.apm import load_image_converter
    from keras_apm.models.apm.apm_student import default_student_config

    keras.utils.set_random_seed(args.seed)
    if args.preset:
        return load_apm(args.preset, load_weights=False)
    try:
        widths = tuple(int(w) for w in args.trunk_widths.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise ValueError(
            "--trunk-widths must be comma-separated positive integers, e.g. "
            f"512,512. Received {args.trunk_widths!r}."
        )
    if not isinstance(args.patch_size or teacher.patch_size, int):
        raise ValueError(
            f"The teacher's patch is {teacher.patch_size}: pass --patch-size."
        )
    size = (args.image_size,) * 2 if args.image_size else None
    # The distillation student (sigmoid RGB head: the official final ReLU
    # can die on a colour channel for good in a short run) without a
    # global head, at the flags' size.
    config = default_student_config(
        teacher,
        trunk_widths=widths,
        global_head=False,
        image_size=size,
        patch_size=args.patch_size,
    )
    return APM(**config), load_image_converter(None, config["image_shape"][:2])


def run(args):
    from keras_apm.distill import save_student_preset
    from keras_apm.models.apm.apm_student import check_student_teacher
    from keras_apm.models.apm.apm_student import load_teacher
    from keras_apm.visualize import overfit
    from keras_apm.visualize import overfit_frames
    from keras_apm.visualize import prepare_images
    from keras_apm.visualize import save_strip
    from keras_apm.visualize import teacher_grids

    images = _common.check_common(args)
    gif = _common.gif_path(args)
    if not args.teacher:
        raise ValueError(
            "overfit needs --teacher: the preset whose grid to distil."
        )
    if (
        args.save_preset
        and os.path.exists(args.save_preset)
        and not args.overwrite
    ):
        raise ValueError(
            f"{args.save_preset!r} exists. Pass --overwrite to replace it."
        )
    if args.save_preset:
        _common.check_output_folder(args.save_preset, "--save-preset")
    teacher = load_teacher(args.teacher)
    model, converter = _fresh_apm(args, teacher)
    if teacher.grid_shape != model.grid_shape:
        teacher = teacher.with_settings(resize_to_grid=model.grid_shape)
    try:
        check_student_teacher(model, teacher)
    except ValueError as e:
        raise ValueError(
            f"The --preset APM does not fit the --teacher: {e} Use a "
            "matching teacher, or leave out --preset to build the APM from "
            "flags."
        ) from None
    _, views = prepare_images(images, model.image_shape, converter)
    targets = teacher_grids(teacher, views, model.grid_shape)
    snapshots = overfit(
        model,
        views,
        targets,
        converter=converter,
        steps=args.steps,
        every=args.every,
        learning_rate=args.learning_rate,
        rgb_weight=args.rgb_weight,
    )
    for s in snapshots:
        terms = f"features {s['features_loss']:.4g}"
        if s["rgb_loss"] is not None:
            terms += f", rgb {s['rgb_loss']:.4g}"
        print(f"step {s['step']:5d}  loss {s['loss']:.4g} ({terms})")
    frames = overfit_frames(
        snapshots,
        targets,
        views=views,
        converter=converter,
        **_common.coloring(args),
    )
    h, w = model.grid_shape
    save_strip(
        frames,
        args.output,
        gif_path=gif,
        title=f"a fresh APM ({h}x{w} grid) distilled on the teacher's grid: "
        f"islands by {args.method}, coloured as the teacher's",
    )
    _common.wrote(args.output)
    if gif:
        _common.wrote(gif, f", {len(frames)} frames")
    if args.save_preset:
        save_student_preset(model, args.save_preset, converter)
        print(f"Saved the overfitted APM to {args.save_preset}.")
    return 0
