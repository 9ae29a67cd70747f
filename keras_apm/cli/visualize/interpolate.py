"""Blends two images' trigger columns, T = (1 - a) T_A + a T_B, in --frames
steps and writes the islands and RGB decode of each step as a PNG strip (the
two images at its ends) and a GIF. Islands are coloured by one colouring
fitted on both ends.
"""

from keras_apm.cli.visualize import _common

HELP = "blend two images' trigger columns"


def add_arguments(parser):
    _common.add_common_arguments(parser, gif=True)
    parser.add_argument(
        "--frames", type=int, default=8, help="including both ends"
    )


def run(args):
    from keras_apm.visualize import interpolate
    from keras_apm.visualize import interpolation_frames
    from keras_apm.visualize import save_strip

    if len(args.image) != 2:
        raise ValueError(
            f"interpolate takes exactly two --image. Received {len(args.image)}."
        )
    gif = _common.gif_path(args)
    model, converter, inputs, views = _common.load_apm(args)
    result = interpolate(model, inputs, num_frames=args.frames)
    strip, gif_frames = interpolation_frames(
        result, views=views, converter=converter, **_common.coloring(args)
    )
    save_strip(
        strip,
        args.output,
        gif_path=gif,
        gif_frames=gif_frames,
        title="the APM field at T = (1 - a) T_A + a T_B: "
        f"islands ({args.method}, fitted on both ends) and RGB decode",
    )
    _common.wrote(args.output)
    if gif:
        _common.wrote(gif, f", {len(gif_frames)} frames")
    return 0
