"""Evaluates the APM field on a grid --factor times denser than its patch
grid (fractional positions), and writes it next to bilinear upsampling of the
patch grid: RGB decode and islands, one block of rows per image.
"""

from keras_apm.cli.visualize import _common

HELP = "features r times denser than the patch grid vs bilinear"


def add_arguments(parser):
    _common.add_common_arguments(parser)
    parser.add_argument(
        "--factor", type=int, default=4,
        help="evaluation points per patch along each axis",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=1024, help="locations per MLP call"
    )


def run(args):
    # The output names' module imports the teachers (Keras): inside `run`.
    from keras_apm.models.apm.apm_outputs import FEATURES
    from keras_apm.models.apm.apm_outputs import RGB
    from keras_apm.visualize import evaluate_dense
    from keras_apm.visualize import panel_figure
    from keras_apm.visualize import save_figure
    from keras_apm.visualize import upsample_rows

    from keras_apm.utils.validation import check_flags

    check_flags(
        args,
        factor=dict(low=1, integer=True),
        chunk_size=dict(low=1, integer=True),
    )
    model, converter, inputs, views = _common.load_apm(args)
    patch = {k: v for k, v in model(inputs).items() if k in (FEATURES, RGB)}
    dense = evaluate_dense(
        model, inputs, args.factor, chunk_size=args.chunk_size
    )
    rows, rms = upsample_rows(
        patch,
        dense,
        args.factor,
        views=views,
        converter=converter,
        **_common.coloring(args),
    )
    rms = ", ".join(f"{r:.3g}" for r in rms)
    fig = panel_figure(
        rows,
        title=f"x{args.factor}: bilinear upsampling vs the APM field at fractional "
        f"positions (RMS feature difference {rms})",
    )
    save_figure(fig, args.output)
    _common.wrote(args.output)
    return 0
