"""Staged, checksummed `save_to_preset` for APM presets.

keras-hub's `save_to_preset` writes straight into the preset directory: a
full disk leaves a half-written preset, and two processes saving one preset
interleave their files. Here every save writes into a fresh staging folder
beside the preset, adds the preset's other files (hard links: the image
converter saved earlier, say), records the SHA-256 of every file in
`checksums.json` (and in `metadata.json` that it did), and swaps the
folder in at once (`keras_apm.utils.files`).
Readers never see a missing or partial preset; of two concurrent saves the
last one wins and nothing is left behind.
"""

import os
import shutil

from keras_apm.utils.preset_files import METADATA_FILE
from keras_apm.utils.preset_files import record_checksums
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


def _close_h5_files_under(directory):
    """Closes HDF5 files a failed writer left open under `directory`.

    Keras keeps the weights file open in the frames of the exception; h5py
    would flush it at interpreter exit onto the full disk and crash the
    process (segfault). The file is emptied first so the close can flush.
    """
    try:
        import h5py
    except ImportError:
        return
    prefix = os.path.join(directory, "")
    for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE):
        try:
            name = os.fsdecode(fid.name)
            if not os.path.abspath(name).startswith(prefix):
                continue
            if os.path.exists(name):
                os.truncate(name, 0)
            fid._close_open_objects(h5py.h5f.OBJ_LOCAL | ~h5py.h5f.OBJ_FILE)
            fid._close_open_objects(h5py.h5f.OBJ_LOCAL | h5py.h5f.OBJ_FILE)
        except Exception:  # closing is best effort; the stage goes anyway.
            pass


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
            _close_h5_files_under(staged)
            raise OSError(
                e.errno,
                f"Could not save the preset {preset_dir!r} "
                f"({e.strerror or e}); it was left unchanged",
            ) from e
        sums = _keep_other_files(preset_dir, staged)
        # Deleting checksums.json must not turn the check off: the metadata
        # (itself checksummed) says they were written.
        record_checksums(staged)
        sums.pop(METADATA_FILE, None)
        for name in sorted(os.listdir(staged)):
            path = os.path.join(staged, name)
            if name not in sums and not name.startswith(".") and (
                name != MANIFEST_FILE and os.path.isfile(path)
            ):
                sums[name] = sha256_file(path)
        write_json(os.path.join(staged, MANIFEST_FILE), {"sha256": sums})
        replace_path(staged, preset_dir)
    finally:
        remove_path(staged)
    return preset_dir
