"""Atomic student presets and resumable distillation checkpoints.

Everything is written under a temporary name beside its destination and
renamed into place, so an interrupted save never leaves a half-written
preset or checkpoint where a reader would look.
"""

import json
import os
import re
import shutil
import zipfile

import keras
import numpy as np

from keras_apm.utils.files import atomic_write
from keras_apm.utils.files import write_json
from keras_apm.utils.validation import check_number

LATEST_FILE = "latest.json"
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"
_EPOCH_DIR = re.compile(r"^epoch_(\d{5,})$")


def check_finite_weights(variables, what):
    """Raises if any variable holds NaN or Inf: such a result is never saved.

    Args:
        variables: Keras variables (e.g. `model.weights`).
        what: what is being saved, for the message (a path).

    Example:
    >>> check_finite_weights(student.weights, "run/student")
    """
    for variable in variables:
        # Through a tensor: NumPy cannot read a (scalar) mirrored variable
        # under MultiWorkerMirroredStrategy directly.
        values = np.asarray(
            keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(variable))
        )
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
            raise ValueError(
                f"Refusing to save {what}: the variable {variable.path!r} "
                f"holds {bad} NaN/Inf values of {values.size}. The training "
                "diverged; lower the learning rate or check the data."
            )


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops `fit` with an error as soon as the training loss is NaN or Inf.

    Keras' `TerminateOnNaN` stops quietly by default and leaves the run to
    save what it has; this raises, so nothing diverged is written after
    it (the checkpoint callback of that epoch never runs).

    Example:
    >>> distiller.fit(ds, callbacks=[StopOnNonFiniteLoss(), checkpoint])
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        value = _scalar(loss)
        if value is not None and not np.isfinite(value):
            raise ValueError(
                f"The training loss became {value} at epoch "
                f"{self._epoch + 1}, batch {batch + 1}: training stopped, "
                "nothing of this epoch was saved. Lower the learning rate "
                "or check the data for NaN/Inf values."
            )


def _scalar(value):
    """A log value as a float; None if this process cannot read it.

    Under `MultiWorkerMirroredStrategy` a step's logs carry a length-one
    axis (`distribution.step_logs`) and may not convert through NumPy; the
    chief's progress bar still reports them, and every worker stops on the
    collective error a diverged chief raises.
    """
    for read in (
        lambda v: np.asarray(keras.ops.convert_to_numpy(v)).reshape(-1)[0],
        lambda v: v.numpy().reshape(-1)[0],
        float,
    ):
        try:
            return float(read(value))
        except (AttributeError, IndexError, TypeError, ValueError):
            continue
    return None


def save_student_preset(student, directory, image_converter=None):
    """Saves an APM (and its image converter) as a preset, atomically.

    Args:
        student: a `keras_apm.APM`.
        directory: the preset directory (created or replaced).
        image_converter: an optional `keras_apm.APMImageConverter` saved
            with it (`image_converter.json`).

    Example:
    >>> save_student_preset(distiller.student, "my_apm",
    ...                     distiller.image_converter)
    >>> keras_apm.APM.from_preset("my_apm")
    """

    check_finite_weights(student.weights, repr(os.fspath(directory)))

    def write(staged):
        student.save_to_preset(staged)
        if image_converter is not None:
            image_converter.save_to_preset(staged)

    return atomic_write(directory, write)


class DistillCheckpoint(keras.callbacks.Callback):
    """Saves the distillation state each epoch, and resumes from it.

    After every epoch (or every `every` epochs) the callback writes
    `directory/epoch_NNNNN/`: the student as a preset (loadable with
    `keras_apm.APM.from_preset`), the optimizer's variables
    (`optimizer.npz`: moments, step count) and `state.json` (the epoch
    count and that epoch's logs). Each is staged under a temporary name and
    renamed; then `directory/latest.json` is replaced to point at it, and
    older epochs beyond `keep` are deleted, as are later epochs (left by
    a longer run, they are not this run's future). Weights or optimizer
    state holding NaN/Inf are refused, never saved. `restore` loads the newest
    complete checkpoint into a compiled distiller and returns the epoch to
    pass as `fit(initial_epoch=...)`, so an interrupted run continues where
    its last checkpoint left it (the data order of the resumed epochs
    follows the pipeline, e.g. a seeded shuffle reshuffles anew).

    Args:
        directory: where checkpoints go (created if needed).
        every: int, save every `every` epochs (the last epoch of `fit` is
            always saved).
        keep: int, how many checkpoints to keep (newest first).
        run_id: optional id of the run (`keras_apm.utils.run_directory`):
            written into each checkpoint, and `restore` refuses a
            checkpoint of another run.

    Example:
    ```python
    checkpoint = keras_apm.distill.DistillCheckpoint("run/checkpoints")
    distiller.compile(optimizer="adam")
    initial_epoch = checkpoint.restore(distiller)  # 0 on a fresh run
    distiller.fit(ds, epochs=20, initial_epoch=initial_epoch,
                  callbacks=[checkpoint])
    ```
    """

    def __init__(self, directory, every=1, keep=1, run_id=None):
        super().__init__()
        check_number(every, "`every`", low=1, integer=True)
        check_number(keep, "`keep`", low=1, integer=True)
        self.directory = os.path.abspath(os.fspath(directory))
        self.every = every
        self.keep = keep
        self.run_id = run_id
        self._epochs = None

    # --- callback hooks ----------------------------------------------
    def on_train_begin(self, logs=None):
        self._epochs = self.params.get("epochs") if self.params else None

    def on_epoch_end(self, epoch, logs=None):
        last = self._epochs is not None and epoch + 1 == self._epochs
        if (epoch + 1) % self.every == 0 or last:
            self.save(self.model, epoch + 1, logs)

    # --- saving and restoring ----------------------------------------
    def save(self, distiller, epoch, logs=None):
        """Writes the checkpoint of `epoch` completed epochs."""
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch_{int(epoch):05d}"
        optimizer = distiller.optimizer
        check_finite_weights(
            list(distiller.student.weights) + list(optimizer.variables),
            f"the checkpoint {os.path.join(self.directory, name)!r}",
        )

        def write(staged):
            save_student_preset(
                distiller.student,
                os.path.join(staged, "student"),
                distiller.image_converter,
            )
            optimizer = distiller.optimizer
            # Through a tensor: numpy cannot read a scalar mirrored
            # variable (the step count) under MultiWorkerMirroredStrategy.
            arrays = {
                f"v{i:05d}": keras.ops.convert_to_numpy(
                    keras.ops.convert_to_tensor(v)
                )
                for i, v in enumerate(optimizer.variables)
            }
            paths = [v.path for v in optimizer.variables]
            np.savez(os.path.join(staged, OPTIMIZER_FILE), **arrays)
            state = {
                "epoch": int(epoch),
                "logs": {k: float(v) for k, v in (logs or {}).items()},
                "optimizer": type(optimizer).__name__,
                "optimizer_variables": paths,
                "run_id": self.run_id,
            }
            write_json(os.path.join(staged, STATE_FILE), state)

        atomic_write(os.path.join(self.directory, name), write)
        write_json(
            os.path.join(self.directory, LATEST_FILE),
            {"checkpoint": name, "epoch": int(epoch)},
        )
        # Prune by age in this run's timeline: the `keep` newest epochs up
        # to this one. Higher epochs are not newer: they are left by a
        # longer run (or the timeline before a resume) and must not survive
        # this run's own checkpoints.
        names = self.checkpoints()
        done = [n for n in names if int(_EPOCH_DIR.match(n).group(1)) <= epoch]
        later = [n for n in names if n not in done]
        for old in later + done[: -self.keep]:
            shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)

    def checkpoints(self):
        """Names of the complete checkpoints, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        found = []
        for entry in os.listdir(self.directory):
            match = _EPOCH_DIR.match(entry)
            path = os.path.join(self.directory, entry)
            if match and os.path.isfile(os.path.join(path, STATE_FILE)):
                found.append((int(match.group(1)), entry))
        return [name for _, name in sorted(found)]

    def latest(self):
        """Path of the newest complete checkpoint, or None."""
        names = self.checkpoints()
        pointer = os.path.join(self.directory, LATEST_FILE)
        if os.path.isfile(pointer):
            try:
                with open(pointer, encoding="utf-8") as f:
                    name = json.load(f)["checkpoint"]
                if name in names:
                    return os.path.join(self.directory, name)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # A damaged pointer: fall back to the newest directory.
        return os.path.join(self.directory, names[-1]) if names else None

    def restore(self, distiller):
        """Loads the newest checkpoint into a compiled distiller.

        Returns:
            The number of epochs it had completed (0 if there is no
            checkpoint): pass it to `fit(initial_epoch=...)`.

        Raises:
            ValueError: if the distiller is not compiled, or the checkpoint
                does not fit its student or optimizer.
        """
        if getattr(distiller, "optimizer", None) is None:
            raise ValueError(
                "Compile the distiller (`distiller.compile(optimizer=...)`) "
                "before restoring a checkpoint into it."
            )
        path = self.latest()
        if path is None:
            return 0
        state = self._read_state(path)
        if self.run_id is not None and state.get("run_id") != self.run_id:
            raise ValueError(
                f"The checkpoint {path!r} belongs to run "
                f"{state.get('run_id')!r}, not to this run ({self.run_id!r}). "
                "Resume a run from its own output directory."
            )
        self._load_student(distiller.student, os.path.join(path, "student"))
        optimizer = distiller.optimizer
        if not optimizer.built:
            optimizer.build(distiller.trainable_variables)
        arrays = self._read_optimizer(path)
        variables = optimizer.variables
        shapes = [tuple(v.shape) for v in variables]
        if (
            state.get("optimizer") != type(optimizer).__name__
            or [tuple(a.shape) for a in arrays] != shapes
        ):
            raise ValueError(
                f"The checkpoint {path!r} holds the state of a "
                f"{state.get('optimizer')} with {len(arrays)} variables; the "
                f"distiller's optimizer is a {type(optimizer).__name__} with "
                f"{len(variables)}. Resume with the optimizer of that run."
            )
        for variable, array in zip(variables, arrays):
            variable.assign(array)
        return int(state["epoch"])

    @staticmethod
    def _read(path, name, read, expected, errors):
        """`read(file)` of the checkpoint's file `name`; `errors` mean damage."""
        file = os.path.join(path, name)
        try:
            return read(file)
        except errors as e:
            checkpoint = os.path.dirname(file)
            raise ValueError(
                f"The checkpoint file {file!r} is damaged ({type(e).__name__}"
                f": {e}); expected {expected}. Delete the checkpoint "
                f"{checkpoint!r} to resume from an earlier one, or start over "
                "without --resume (`resume=False`; --overwrite to replace the "
                "run)."
            ) from None

    def _read_state(self, path):
        def read(file):
            with open(file, encoding="utf-8") as f:
                state = json.load(f)
            if not isinstance(state, dict):
                raise TypeError(f"a JSON {type(state).__name__}, not an object")
            epoch = state.get("epoch")
            if isinstance(epoch, bool) or not isinstance(epoch, int) or (
                epoch < 0
            ):
                raise ValueError(f"its `epoch` is {epoch!r}")
            return state

        expected = (
            "a JSON object with the completed `epoch` (an int >= 0), as "
            "`DistillCheckpoint.save` writes it"
        )
        errors = (OSError, UnicodeDecodeError, ValueError, TypeError)
        return self._read(path, STATE_FILE, read, expected, errors)

    def _read_optimizer(self, path):
        def read(file):
            with np.load(file, allow_pickle=False) as data:
                return [data[f"v{i:05d}"] for i in range(len(data.files))]

        expected = (
            "a NumPy .npz archive of the optimizer's variables (v00000, "
            "v00001, ...), as `DistillCheckpoint.save` writes it"
        )
        errors = (
            OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile,
            TypeError,  # a .npy file: np.load returns an array, no archive
        )  # fmt: skip
        return self._read(path, OPTIMIZER_FILE, read, expected, errors)

    @staticmethod
    def _load_student(student, preset):
        from keras_apm.models.apm import APM

        saved = APM.from_preset(preset)

        def architecture(model):
            config = model.get_config()
            for key in ("name", "dtype", "trainable"):
                config.pop(key, None)
            return config, [tuple(w.shape) for w in model.weights]

        if architecture(saved) != architecture(student):
            raise ValueError(
                f"The checkpoint's student ({preset!r}) is not built like "
                "the distiller's student. Resume with the same APM config."
            )
        for target, source in zip(student.weights, saved.weights):
            target.assign(source.value)
