"""`keras-apm export`: a preset -> TensorFlow SavedModel or TFLite file."""

import os

from keras_apm.cli import _arguments
from keras_apm.export.checks import FORMAT_ALIASES
from keras_apm.export.checks import FORMATS
from keras_apm.export.checks import QUANTIZATIONS


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="Export a preset as a TensorFlow SavedModel or a TFLite file.",
        description=(
            "Writes a SavedModel directory or a .tflite file with three "
            "signatures: serving_default (the full grid), trigger_column and "
            "evaluate_locations. Works under any KERAS_BACKEND."
        ),
    )
    parser.add_argument(
        "--preset",
        help="preset name, handle or directory (with --ttt: the student, "
        "default sized from the teacher)",
    )
    parser.add_argument(
        "--format", default=FORMATS[0], choices=FORMATS + tuple(FORMAT_ALIASES),
        help="export format (tf_saved_model and litert are Keras' names for "
        "saved_model and tflite)",
    )
    parser.add_argument(
        "--quantization",
        default=None,
        choices=QUANTIZATIONS,
        help=(
            "TFLite only; int8 needs --representative-data "
            "(default: none, float32 weights)"
        ),
    )
    parser.add_argument(
        "--representative-data",
        default=None,
        help=(
            "int8 calibration images: a folder of image files, or a .npy "
            "array (N, H, W, 3) of raw 0..255 images; both go through the "
            "preset's image converter"
        ),
    )
    parser.add_argument(
        "--representative-images",
        type=int,
        default=100,
        help="use at most this many calibration images (default 100)",
    )
    parser.add_argument(
        "--output", required=True, help="directory (saved_model) or .tflite"
    )
    ttt = parser.add_argument_group(
        "on-device test-time training (--ttt)",
        "one .tflite file with the signatures targets, train, reset, "
        "classify, infer and settings (docs/export.md)",
    )
    ttt.add_argument(
        "--ttt", action="store_true",
        help="write an on-device TTT file (needs --teacher, --format tflite)",
    )  # fmt: skip
    ttt.add_argument("--teacher", help="teacher preset: name, handle or directory")
    _arguments.add_ttt_settings(ttt)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output"
    )
    parser.set_defaults(func=run)


def run(args):
    from keras_apm.export import export
    from keras_apm.export.checks import canonical_format
    from keras_apm.export.checks import check_options
    from keras_apm.export.checks import check_target

    if args.ttt or args.teacher is not None:
        return _run_ttt(args)
    if args.preset is None:
        raise ValueError("--preset is required (or --ttt --teacher PRESET).")
    # Cheap checks first: a bad command line loads no model.
    args.format = canonical_format(args.format)
    check_options(args.format, args.quantization, args.representative_data)
    check_target(args.output, args.format, args.overwrite)
    data = None
    if args.representative_data is not None:
        data = representative_inputs(
            args.representative_data, args.preset, args.representative_images
        )
    export(
        args.preset,
        args.output,
        format=args.format,
        quantization=args.quantization,
        representative_data=data,
        overwrite=args.overwrite,
    )
    print(
        f"Wrote {args.format} ({args.quantization or 'float32'}) of "
        f"{args.preset} to {args.output} ({_size(args.output) / 1e6:.1f} MB)."
    )
    return 0


def _run_ttt(args):
    from keras_apm.export.checks import check_target
    from keras_apm.export.ttt_litert import TTT_QUANTIZATIONS
    from keras_apm.utils.validation import check_flags

    if not args.ttt or args.teacher is None:
        raise ValueError("--ttt and --teacher go together (on-device TTT).")
    if args.format != "tflite":
        raise ValueError(
            f"--ttt writes a LiteRT file: pass --format tflite. Received "
            f"--format {args.format}."
        )
    if args.quantization not in TTT_QUANTIZATIONS or args.representative_data:
        raise ValueError(
            "--ttt takes --quantization float16 or none (the adapted weights "
            f"stay float32). Received --quantization {args.quantization}."
        )
    check_flags(args, **_arguments.TTT_SETTING_CHECKS)
    check_target(args.output, "tflite", args.overwrite)
    from keras_apm.export.ttt_litert import export_ttt

    classifier = None
    if args.class_embeddings is not None:
        import numpy as np

        from keras_apm.ttt import EmbeddingClassifier

        classifier = EmbeddingClassifier(np.load(args.class_embeddings))
    export_ttt(
        args.teacher,
        args.output,
        student=args.preset,
        classifier=classifier,
        **_arguments.ttt_settings(args),
        quantization=args.quantization,
        overwrite=args.overwrite,
    )
    print(
        f"Wrote on-device TTT tflite ({args.quantization or 'float32'}) of "
        f"teacher {args.teacher} to {args.output} "
        f"({_size(args.output) / 1e6:.1f} MB)."
    )
    return 0


def representative_inputs(source, preset, limit=100):
    """Model inputs for int8 calibration, from raw images.

    Args:
        source: a folder of image files (or of class subfolders), or a
            `.npy` file holding raw images `(N, H, W, 3)`, values 0..255.
        preset: the preset whose image converter prepares them.
        limit: use at most this many images.

    Returns:
        float32 `(N, H, W, C)` model inputs.

    Example:
    ```python
    inputs = representative_inputs("photos/", "apm_tiny_digits", limit=64)
    ```
    """
    import keras
    import numpy as np

    from keras_apm.utils.validation import check_number

    check_number(limit, "--representative-images", low=1, integer=True)
    if os.path.isdir(source):
        from keras_apm.data import list_image_files

        paths = list_image_files(source)[0][: int(limit)]
        images = [
            keras.utils.img_to_array(keras.utils.load_img(p, color_mode="rgb"))
            for p in paths
        ]
    elif os.path.isfile(source) and source.endswith(".npy"):
        array = np.load(source)
        if array.ndim != 4:
            raise ValueError(
                f"Expected raw images (N, H, W, 3) in {source!r}. Received "
                f"shape {array.shape}."
            )
        images = list(array[: int(limit)])
    else:
        raise ValueError(
            "--representative-data must be a folder of images or a .npy "
            f"file. Received {source!r}."
        )
    return preset_inputs(preset, images)


def preset_inputs(preset, images):
    """Raw 0..255 images -> model inputs, by the preset's image converter.

    A preset without `image_converter.json` takes raw 0..255 float images,
    so they are only resized to the model's input size and cast
    (`load_image_converter`'s fallback with `scaling="none"`). Images may
    differ in size: each is resized before they are stacked.

    Example:
    ```python
    inputs = preset_inputs("apm_tiny_digits", raw_uint8_images)
    ```
    """
    import keras
    import numpy as np
    from keras_apm.models.apm import load_image_converter

    import keras_apm

    # The config alone: the fallback converter needs the input size.
    model = keras_apm.APM.from_preset(preset, load_weights=False)
    image_size = model.image_shape[:2]
    converter = load_image_converter(preset, image_size, scaling="none")
    inputs = [converter(np.asarray(x)[None]) for x in images]
    inputs = [keras.ops.convert_to_numpy(x) for x in inputs]
    return np.concatenate(inputs).astype("float32")


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )
