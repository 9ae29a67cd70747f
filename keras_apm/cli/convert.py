"""`keras-apm convert`: official PyTorch checkpoint -> keras_apm preset."""

from keras_apm.convert.official import OFFICIAL_VARIANTS


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="Convert an official APM checkpoint (.pth) into a preset.",
        description=(
            "Checks every tensor of an official APM state_dict against the "
            "variant and writes a keras_apm preset directory."
        ),
    )
    parser.add_argument("--checkpoint", required=True, help="official .pth file")
    parser.add_argument(
        "--variant", required=True, choices=sorted(OFFICIAL_VARIANTS),
        help="which official model the checkpoint holds",
    )
    parser.add_argument("--output", required=True, help="preset directory")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output"
    )
    parser.set_defaults(func=run)


def run(args):
    from keras_apm.convert import convert_official_checkpoint

    model = convert_official_checkpoint(
        args.checkpoint, args.variant, args.output, overwrite=args.overwrite
    )
    print(
        f"Wrote {args.variant} preset to {args.output} "
        f"({model.count_params():,} parameters)."
    )
    return 0
