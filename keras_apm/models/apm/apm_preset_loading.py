"""Checks around keras-hub's preset loading, so failures say what is wrong.

keras-hub does the work (built-in names, `kaggle://`, `hf://`, local
directories); this module makes a missing file, a corrupt config, weights
with missing, extra or mis-shaped tensors, or an unreachable handle fail with
a message naming the preset and the problem.
"""

import json
import os


CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
REMOTE_SCHEMES = ("kaggle://", "hf://", "modelscope://", "gs://")


def _is_remote(handle):
    return isinstance(handle, str) and handle.startswith(REMOTE_SCHEMES)


def resolve_handle(preset):
    """Maps a built-in preset name to its handle (else returns `preset`)."""
    from keras_apm.utils.keras_hub_compat import BUILTIN_PRESETS

    if isinstance(preset, str) and preset in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[preset]["kaggle_handle"]
    return preset


def check_local_preset(directory):
    """Raises a ValueError naming what a local preset directory lacks."""
    if not os.path.isdir(directory):
        raise ValueError(
            f"Preset directory {directory!r} does not exist. Expected a "
            "directory written by `save_to_preset` (or the converter), a "
            "built-in preset name, or a kaggle:// / hf:// handle."
        )
    missing = [
        name
        for name in (CONFIG_FILE, WEIGHTS_FILE)
        if not os.path.isfile(os.path.join(directory, name))
    ]
    if missing:
        raise ValueError(
            f"Preset directory {directory!r} is missing {', '.join(missing)}. "
            f"Expected {CONFIG_FILE} and {WEIGHTS_FILE}; found "
            f"{sorted(os.listdir(directory))}."
        )
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(
            f"Preset file {path!r} is not valid JSON ({e}). Re-save the "
            "preset with `save_to_preset`."
        ) from None
    if not isinstance(config, dict) or "registered_name" not in config:
        raise ValueError(
            f"Preset file {path!r} is not a Keras model config (expected a "
            "dict with 'registered_name'). Re-save the preset with "
            "`save_to_preset`."
        )


def weight_tensors(path):
    """`{name: shape}` of every tensor in a Keras `.weights.h5` file."""
    import h5py

    shapes = {}
    try:
        with h5py.File(path, "r") as f:

            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    shapes[name] = tuple(item.shape)

            f.visititems(visit)
    except OSError as e:
        raise ValueError(
            f"Weights file {path!r} cannot be read as HDF5 ({e}). The file "
            "is truncated or corrupt: re-save or re-download the preset."
        ) from None
    return shapes


def check_weights_match(model, path):
    """Compares a weights file's tensors with a freshly built model's.

    Keras warns (rather than fails) on some mismatches; a preset must match
    exactly, so this names the missing, unexpected and mis-shaped tensors.
    """
    import tempfile

    expected_file = tempfile.NamedTemporaryFile(
        suffix=".weights.h5", delete=False
    )
    expected_file.close()
    try:
        model.save_weights(expected_file.name, overwrite=True)
        expected = weight_tensors(expected_file.name)
    finally:
        os.remove(expected_file.name)
    found = weight_tensors(path)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(
        f"{k}: expected {expected[k]}, found {found[k]}"
        for k in set(expected) & set(found)
        if expected[k] != found[k]
    )
    if missing or unexpected or misshaped:
        raise ValueError(
            f"Weights file {path!r} does not match the model's config. "
            f"Missing tensors: {missing or 'none'}. Unexpected tensors: "
            f"{unexpected or 'none'}. Mis-shaped tensors: "
            f"{misshaped or 'none'}."
        )


def load_backbone(cls, keras_hub_from_preset, preset, load_weights, **kwargs):
    """`cls.from_preset` with the checks of this module around it."""
    handle = resolve_handle(preset)
    if not isinstance(handle, str):
        raise ValueError(
            f"A preset must be a string (name, handle or directory). "
            f"Received: {preset!r}"
        )
    if _is_remote(handle):
        try:
            return keras_hub_from_preset(handle, load_weights=load_weights, **kwargs)
        except Exception as e:  # network, auth or missing-file errors.
            raise ValueError(
                f"Could not load preset {preset!r} from {handle!r}: "
                f"{type(e).__name__}: {e}. If this machine is offline, download "
                "the preset elsewhere and pass its local directory."
            ) from e
    check_local_preset(handle)
    if load_weights:
        model = keras_hub_from_preset(handle, load_weights=False, **kwargs)
        weights = os.path.join(handle, WEIGHTS_FILE)
        check_weights_match(model, weights)
        model.load_weights(weights)
        return model
    return keras_hub_from_preset(handle, load_weights=False, **kwargs)
