"""Checks around keras-hub's preset loading, so failures say what is wrong.

keras-hub does the work (built-in names, `kaggle://`, `hf://`, local
directories); this module makes a missing file, a corrupt config, weights
with missing, extra or mis-shaped tensors, or an unreachable handle fail with
a message naming the preset and the problem.

Presets saved by keras_apm carry `checksums.json` (SHA-256 of every file,
the task's `task.json` and `task.weights.h5` included) and say so in their
`metadata.json` (`"keras_apm_checksums": "checksums.json"`); the checksums
are verified on load and a changed file is named. A preset whose metadata
records checksums but whose `checksums.json` is gone is refused (deleting
the file must not turn the check off). Presets without the record (saved
by keras-hub directly) still load. Weights holding NaN or Inf are
refused: such a model answers NaN everywhere, and finding that out after
a long run costs more than a clear error now. `check_weights=False` (a
`from_preset` argument) skips the checksum and NaN checks, e.g. to inspect
a broken preset.
"""

import os
import socket
from urllib.parse import urlparse

import numpy as np

from keras_apm.utils.files import MANIFEST_FILE
from keras_apm.utils.files import read_json
from keras_apm.utils.files import verify_manifest

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
IMAGE_CONVERTER_FILE = "image_converter.json"
METADATA_FILE = "metadata.json"
TASK_CONFIG_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
PREPROCESSOR_FILE = "preprocessor.json"
# The key of `metadata.json` that records that keras_apm wrote checksums.
CHECKSUMS_RECORD = "keras_apm_checksums"
REMOTE_SCHEMES = ("kaggle://", "hf://", "modelscope://", "gs://")
# Where each scheme downloads from, and the variable that says "use the
# local cache only" (then no probe is made).
HUB_HOSTS = {
    "hf://": ("HF_ENDPOINT", "https://huggingface.co", "HF_HUB_OFFLINE"),
    "kaggle://": (None, "https://www.kaggle.com", "KAGGLEHUB_OFFLINE"),
    "modelscope://": (None, "https://www.modelscope.cn", None),
    "gs://": (None, "https://storage.googleapis.com", None),
}
PROBE_TIMEOUT_S = 3.0


def _is_remote(handle):
    return isinstance(handle, str) and handle.startswith(REMOTE_SCHEMES)


def resolve_handle(preset):
    """Maps a built-in preset name to its handle (else returns `preset`)."""
    from keras_apm.utils.keras_hub_compat import BUILTIN_PRESETS

    if isinstance(preset, str) and preset in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[preset]["kaggle_handle"]
    return preset


def probe_hub(handle, timeout=PROBE_TIMEOUT_S):
    """Raises a ValueError at once if the hub behind `handle` is unreachable.

    keras-hub's downloads retry for tens of seconds before failing with a
    message that hides the cause; one short connection attempt says it
    first. Skipped when the hub's offline variable (`HF_HUB_OFFLINE=1`) asks
    for the local cache.
    """
    scheme = handle.split("://", 1)[0] + "://"
    endpoint_var, default, offline_var = HUB_HOSTS[scheme]
    if offline_var and os.environ.get(offline_var, "").lower() in ("1", "true", "yes"):
        return
    url = urlparse(os.environ.get(endpoint_var or "", "") or default)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        hint = (
            f" To use a copy in the local cache, set {offline_var}=1."
            if offline_var
            else ""
        )
        raise ValueError(
            f"Cannot load preset {handle!r}: the hub {host} is unreachable "
            f"(offline? {type(e).__name__}: {e}). Download the preset on a "
            f"machine with network access and pass its local directory.{hint}"
        ) from None


def _read_json(path, what):
    return read_json(
        path,
        "Preset file",
        f"Expected the {what} written by `save_to_preset`; re-save the preset.",
    )


def verify_preset(directory, names=None):
    """Checks a local preset's files against its `checksums.json`.

    A preset whose `metadata.json` records checksums (every preset keras_apm
    saves) must still have them; one without the record (saved by keras-hub)
    passes unchecked.

    Args:
        directory: the preset directory.
        names: the files to check (those listed); default all listed.

    Returns:
        The names checked.

    Example:
    >>> verify_preset("my_apm", names=["config.json", "model.weights.h5"])
    """
    manifest = os.path.join(directory, MANIFEST_FILE)
    metadata = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(manifest) and os.path.isfile(metadata):
        record = _read_json(metadata, "preset metadata")
        if isinstance(record, dict) and record.get(CHECKSUMS_RECORD):
            raise ValueError(
                f"Preset file {manifest!r} is missing, but {metadata!r} "
                f"records that checksums were written ({CHECKSUMS_RECORD!r}), "
                "so the preset's files cannot be verified. Restore "
                f"{MANIFEST_FILE} from the original preset, re-save the "
                "model with `save_to_preset`, or pass check_weights=False to "
                "load it unverified."
            )
    return verify_manifest(directory, names=names)


def record_checksums(directory):
    """Adds the checksums record to a preset's `metadata.json`.

    Written by `save_to_preset` before the checksums themselves (the
    metadata is one of the files they cover).
    """
    from keras_apm.utils.files import write_json

    path = os.path.join(directory, METADATA_FILE)
    metadata = _read_json(path, "preset metadata") if os.path.isfile(path) else {}
    if not isinstance(metadata, dict):
        metadata = {}
    metadata[CHECKSUMS_RECORD] = MANIFEST_FILE
    # A new file (not written through a hard link to an older preset's).
    write_json(path, metadata, indent=4)


def check_preset_files(directory, check_weights=True):
    """Verifies every file of a local preset and names the first bad one.

    Checksums (`verify_preset`, unless `check_weights=False`), then each
    JSON file must parse and each extra weights file (`task.weights.h5`)
    must read as HDF5 with finite values: keras-hub's own loader would
    fail on them with errors that name no file.
    """
    if check_weights:
        verify_preset(directory)
    for name, what in (
        (CONFIG_FILE, "model config"),
        (TASK_CONFIG_FILE, "task config"),
        (PREPROCESSOR_FILE, "preprocessor config"),
        (IMAGE_CONVERTER_FILE, "image converter config"),
    ):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            config = _read_json(path, what)
            if not isinstance(config, dict) or not isinstance(
                config.get("config"), dict
            ):
                raise ValueError(
                    f"Preset file {path!r} is not a Keras config (expected a "
                    "dict with a 'config' dict). Re-save the preset with "
                    "`save_to_preset`."
                )
    path = os.path.join(directory, TASK_WEIGHTS_FILE)
    if os.path.isfile(path):
        weight_tensors(path, check_finite=check_weights)


def check_image_converter_file(directory):
    """Raises a ValueError naming a corrupt `image_converter.json`."""
    path = os.path.join(directory, IMAGE_CONVERTER_FILE)
    if not os.path.isfile(path):
        return
    verify_preset(directory, names=[IMAGE_CONVERTER_FILE])
    config = _read_json(path, "image converter config")
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError(
            f"Preset file {path!r} is not a Keras layer config (expected a "
            "dict with a 'config' dict). Re-save the image converter with "
            "`save_to_preset`."
        )


def check_local_preset(directory, load_weights=True):
    """Raises a ValueError naming what a local preset directory lacks.

    The weights file is required only when the weights are to be loaded.
    """
    if not os.path.isdir(directory):
        raise ValueError(
            f"Preset directory {directory!r} does not exist. Expected a "
            "directory written by `save_to_preset` (or the converter), a "
            "built-in preset name, or a kaggle:// / hf:// handle."
        )
    needed = (CONFIG_FILE, WEIGHTS_FILE) if load_weights else (CONFIG_FILE,)
    missing = [
        name for name in needed if not os.path.isfile(os.path.join(directory, name))
    ]
    if missing:
        raise ValueError(
            f"Preset directory {directory!r} is missing {', '.join(missing)}. "
            f"Expected {' and '.join(needed)}"
            + ("" if load_weights else " (load_weights=False)")
            + f"; found {sorted(os.listdir(directory))}."
        )
    path = os.path.join(directory, CONFIG_FILE)
    config = _read_json(path, "model config")
    if (
        not isinstance(config, dict)
        or "registered_name" not in config
        or not isinstance(config.get("config"), dict)
    ):
        raise ValueError(
            f"Preset file {path!r} is not a Keras model config (expected a "
            "dict with 'registered_name' and a 'config' dict). Re-save the "
            "preset with `save_to_preset`."
        )


def weight_tensors(path, check_finite=False):
    """`{name: shape}` of every tensor in a Keras `.weights.h5` file.

    With `check_finite`, also raises a ValueError naming the file and the
    first tensors that hold NaN or Inf.
    """
    import h5py

    shapes = {}
    nonfinite = []
    try:
        with h5py.File(path, "r") as f:

            def visit(name, item):
                if isinstance(item, h5py.Dataset):
                    shapes[name] = tuple(item.shape)
                    if check_finite and item.dtype.kind == "f":
                        if not np.isfinite(item[()]).all():
                            nonfinite.append(name)

            f.visititems(visit)
    except OSError as e:
        raise ValueError(
            f"Weights file {path!r} cannot be read as HDF5 ({e}). The file "
            "is truncated or corrupt: re-save or re-download the preset."
        ) from None
    if nonfinite:
        raise ValueError(
            f"Weights file {path!r} holds NaN or Inf values in "
            f"{len(nonfinite)} tensor(s), e.g. {nonfinite[:3]}. Such a model "
            "answers NaN. Re-save it from a finite model, or pass "
            "check_weights=False to load it anyway."
        )
    return shapes


def check_weights_match(model, path, check_finite=True):
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
    found = weight_tensors(path, check_finite=check_finite)
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
    check_weights = kwargs.pop("check_weights", True)
    handle = resolve_handle(preset)
    if not isinstance(handle, str):
        raise ValueError(
            f"A preset must be a string (name, handle or directory). "
            f"Received: {preset!r}"
        )
    if _is_remote(handle):
        probe_hub(handle)
        try:
            return keras_hub_from_preset(handle, load_weights=load_weights, **kwargs)
        except Exception as e:  # network, auth or missing-file errors.
            raise ValueError(
                f"Could not load preset {preset!r} from {handle!r}: "
                f"{type(e).__name__}: {e}. If this machine is offline, download "
                "the preset elsewhere and pass its local directory."
            ) from e
    check_local_preset(handle, load_weights=load_weights)
    if check_weights:
        names = [CONFIG_FILE] + ([WEIGHTS_FILE] if load_weights else [])
        verify_preset(handle, names=names)
    try:
        model = keras_hub_from_preset(handle, load_weights=False, **kwargs)
    except ValueError as e:
        # The config's own checks (e.g. a size that cannot fit): name the file.
        raise ValueError(
            f"Preset file {os.path.join(handle, CONFIG_FILE)!r} describes a "
            f"model that cannot be built: {e}"
        ) from None
    if load_weights:
        weights = os.path.join(handle, WEIGHTS_FILE)
        check_weights_match(model, weights, check_finite=check_weights)
        model.load_weights(weights)
    return model
