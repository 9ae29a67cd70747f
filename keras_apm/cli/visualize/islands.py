"""Writes "input | RGB decode | islands" for each image, one row each.

With --teacher, a fourth panel shows the teacher's grid, and when the widths
match both grids share one colouring fitted on the teacher's, so equal
colours mean the student reproduces the teacher there.
"""

from keras_apm.cli.visualize import _common

HELP = "input | RGB decode | islands (| teacher islands)"


def add_arguments(parser):
    _common.add_common_arguments(parser)


def run(args):
    # The output names' module imports the teachers (Keras): inside `run`.
    from keras_apm.models.apm.apm_outputs import FEATURES
    from keras_apm.models.apm.apm_outputs import RGB
    from keras_apm.teachers import Teacher
    from keras_apm.visualize import images as images_lib
    from keras_apm.visualize import islands_figure
    from keras_apm.visualize import island_colors
    from keras_apm.visualize import save_figure
    from keras_apm.visualize import teacher_grids

    model, converter, inputs, views = _common.load_apm(args)
    out = model(inputs)
    grids = list(images_lib.to_numpy(out[FEATURES]))
    rgb = (
        list(images_lib.to_display(out[RGB], converter))
        if RGB in out
        else None
    )
    kwargs = _common.coloring(args)
    teacher_colors = None
    if args.teacher:
        teacher = Teacher.from_preset(
            args.teacher, resize_to_grid=model.grid_shape
        )
        targets = list(teacher_grids(teacher, views, model.grid_shape))
        if targets[0].shape[-1] == model.feature_dim:
            colors = island_colors(
                grids + targets,
                reference=None if args.method == "tsne" else targets,
                **kwargs,
            )
            colors, teacher_colors = colors[: len(grids)], colors[len(grids) :]
        else:
            colors = island_colors(grids, **kwargs)
            teacher_colors = island_colors(targets, **kwargs)
    else:
        colors = island_colors(grids, **kwargs)
    h, w = model.grid_shape
    fig = islands_figure(
        [v / 255.0 for v in views],
        rgb,
        colors,
        teacher_islands=teacher_colors,
        title=f"islands by {args.method}, {h}x{w} grid",
    )
    save_figure(fig, args.output)
    _common.wrote(args.output)
    return 0
