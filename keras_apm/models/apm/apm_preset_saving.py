"""Staged, checksummed `save_to_preset` for APM presets.

keras-hub's `save_to_preset` writes straight into the preset directory: a
full disk leaves a half-written preset, and two processes saving one preset
interleave their files. Here every save writes into a fresh staging folder
beside the preset, adds the preset's other files (hard links: the image
converter saved earlier, say), records the SHA-256 of every file in
`checksums.json`, and swaps the folder in at once (`keras_apm.utils.files`).
Readers never see a missing or partial preset; of two concurrent saves the
last one wins and nothing is left behind.
"""

import gc
import os
import shutil

from keras_apm.utils.files import MANIFEST_FILE
from keras_apm.utils.files import remove_path
from keras_apm.utils.files import remove_stale_stages
from keras_apm.utils.files import replace_path
from keras_apm.utils.files import sha256_file
from keras_apm.utils.files import staging_path
from keras_apm.utils.files import write_json


def _old_sums(directory):
    import json

    try:
        with open(os.path.join(directory, MANIFEST_FILE), encoding="utf-8") as f:
            sums = json.load(f)["sha256"]
        return sums if isinstance(sums, dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _keep_other_files(preset_dir, staged):
    """Links the preset's files the new save did not write into `staged`.

    Returns the old checksums of the linked files (same bytes, no rehash).
    """
    if not os.path.isdir(preset_dir):
        return {}
    old_sums = _old_sums(preset_dir)
    reused = {}
    for name in os.listdir(preset_dir):
        source = os.path.join(preset_dir, name)
        target = os.path.join(staged, name)
        if (
            name == MANIFEST_FILE
            or name.startswith(".")
            or os.path.lexists(target)
            or not os.path.isfile(source)
        ):
            continue
        try:
            os.link(source, target)
        except OSError:  # no hard links here (or another device): copy.
            shutil.copy2(source, target)
        if name in old_sums:
            reused[name] = old_sums[name]
    return reused


def save_preset_staged(preset_dir, write):
    """Runs `write(staged_dir)` and swaps the result in as `preset_dir`.

    Args:
        preset_dir: the preset directory (created or replaced).
        write: writes this object's preset files into the folder given.

    Raises:
        OSError: naming the preset when the disk is full or unwritable;
            `preset_dir` is then left as it was.

    Example:
    >>> save_preset_staged("my_apm", super().save_to_preset)
    """
    preset_dir = os.path.abspath(os.fspath(preset_dir))
    os.makedirs(os.path.dirname(preset_dir), exist_ok=True)
    remove_stale_stages(preset_dir)
    staged = staging_path(preset_dir, suffix="")
    try:
        os.makedirs(staged)
        try:
            write(staged)
        except OSError as e:
            raise OSError(
                e.errno,
                f"Could not save the preset {preset_dir!r} "
                f"({e.strerror or e}); it was left unchanged",
            ) from e
        sums = _keep_other_files(preset_dir, staged)
        for name in sorted(os.listdir(staged)):
            path = os.path.join(staged, name)
            if name not in sums and not name.startswith(".") and (
                name != MANIFEST_FILE and os.path.isfile(path)
            ):
                sums[name] = sha256_file(path)
        write_json(os.path.join(staged, MANIFEST_FILE), {"sha256": sums})
        replace_path(staged, preset_dir)
    finally:
        # h5py keeps a failed file's handle in the traceback's frames and
        # would flush it to a full disk at interpreter exit (a segfault):
        # close it now, while the stage still exists.
        gc.collect()
        remove_path(staged)
    return preset_dir
