"""Batched test-time training: B images, B independent students, one step.

Adapting one image at a time leaves the hardware idle (the official code
feeds 8 copies of the image to fill a GPU). Here every weight of the student
gets a leading *image axis*: image `b` is answered by `params[...][b]` only
(every layer computes from these stacked weights with its own
`call_with_weights`, the math of its `call`), and the loss is the *sum* of
the per-image losses, so the gradient reaching `params[...][b]` is exactly
the gradient of image `b`'s own loss. The optimizer is a Keras optimizer whose
update is element-wise (`recipes.ELEMENTWISE_OPTIMIZERS`), so each image also
has its own moments. One compiled step therefore adapts B images as B
separate runs would; `tests/test_ttt.py` checks it against Keras'
`train_on_batch` on the real `APM`, one image at a time.

The forward pass uses `keras.ops` only; differentiating and compiling the
step is the backend-specific part (`keras_apm.backend`).
"""


import keras
import numpy as np
from keras import ops

from keras_apm.distill.losses import cosine_similarity
from keras_apm.backend import backend_module
from keras_apm.layers import explicit_weights
from keras_apm.models.apm import apm_outputs
from keras_apm.models.apm.apm_outputs import FEATURES
from keras_apm.models.apm.apm_outputs import GLOBAL
from keras_apm.models.apm.apm_outputs import RGB
from keras_apm.ttt import recipes
from keras_apm.ttt.subsets import check_locations_per_step
from keras_apm.ttt.subsets import step_indices
from keras_apm.utils.validation import check_number

LOSSES = recipes.LOSSES


def check_student(model, with_rgb=False):
    """Raises a ValueError unless `model` is an APM that TTT can adapt."""
    from keras_apm.models.apm import APM

    if not isinstance(model, APM):
        raise ValueError(
            f"Expected a `keras_apm.APM` student. Received {type(model).__name__}."
        )
    if not model.global_head:
        raise ValueError(
            "Test-time training regresses the student's global vector: "
            "build the student with `global_head=True`."
        )
    if with_rgb and not model.rgb_head:
        raise ValueError("`rgb_weight > 0` needs a student with `rgb_head=True`.")
    explicit_weights.check_float_weights(model, "Test-time training")


def ttt_outputs(with_rgb=False):
    """The outputs batched TTT computes: the head table's TTT heads (the
    feature grid and the global vector), and the RGB decode when its loss
    term is on."""
    outputs = apm_outputs.ttt_heads()
    return outputs + (RGB,) if with_rgb else outputs


def student_weights(model, with_rgb=False):
    """The student's variables that the TTT loss reads, in its layers' layout.

    `model.explicit_weights(outputs=ttt_outputs(with_rgb))`: a tree
    `{"column", "field", "global"}` of each layer's `explicit_weights()`.
    Heads the loss does not read (the lower GLOM levels; the RGB head unless
    `with_rgb`; added heads the table leaves out of TTT) are left out, so
    they are neither stacked nor computed.
    """
    return model.explicit_weights(outputs=ttt_outputs(with_rgb))


def batched_forward(model, params, images, indices=None):
    """The APM's forward pass with one set of weights per image.

    Equal to calling `model` with weights `params[...][b]` on `images[b]`
    (float rounding aside): `APM.call_with_weights`, every layer computing
    from its explicit weights, here stacked.

    Args:
        model: the student `APM` (its layers and settings; its own variables
            are not read).
        params: `student_weights(model)`'s tree of `(B, ...)` tensors.
        images: `(B, H, W, C)` float32 student inputs (preprocessed).
        indices: `None` (the whole grid) or `(L,)` int row-major indices of
            the grid locations to answer; the global vector then pools
            those L locations only (`keras_apm.ttt.subsets`), and
            `"features"` / `"rgb"` are `(B, L, D)` / `(B, L, 3)`.

    Returns:
        dict with `"global"` `(B, D)`, `"features"` `(B, h, w, D)` and,
        when `params` hold the RGB head, `"rgb"` `(B, h, w, 3)`.
    """
    if indices is not None:
        return _subset_forward(model, params, images, indices)
    # All locations in one call: the step is compiled, chunks would not
    # lower the memory that the gradient needs.
    return model.call_with_weights(params, images, chunk_size=None)


def _subset_forward(model, params, images, indices):
    """`batched_forward` at the grid locations `indices` only."""
    from keras_apm.layers.position_encoding import grid_locations
    from keras_apm.layers.position_encoding import grid_position_codes

    trigger = model.column.call_with_weights(params["column"], images)
    locations = ops.take(grid_locations(model.grid_shape), indices, axis=0)
    answers = model.field.call_with_weights(
        params["field"], trigger, locations=locations, chunk_size=None
    )
    features = answers[FEATURES]
    codes = grid_position_codes(tuple(model.grid_shape), features.shape[-1])
    codes = ops.take(ops.convert_to_tensor(codes), indices, axis=0)
    pooled = model.global_pool.call_with_weights(params["global"], features, codes)
    return dict(answers, **{GLOBAL: pooled})


def global_loss(prediction, target, loss):
    """Per-image loss between `(B, D)` vectors.

    `"mse"`: mean over D (Keras' `"mse"`); `"cosine"`: `1 - cos` (Keras'
    `CosineSimilarity` loss plus 1).
    """
    if loss == "mse":
        return ops.mean(ops.square(prediction - target), axis=-1)
    return 1.0 - cosine_similarity(prediction, target)


class BatchedTTT:
    """Adapts B students (one per image) in one compiled step.

    Every image gets its own copy of the student's weights and its own
    optimizer state, both reset for every call of `adapt`, and `steps`
    updates regress each student's global vector onto its own image's target
    (plus optional MSE terms on the feature grid and the RGB head).

    Args:
        student: a `keras_apm.APM` with `global_head=True` (any other
            settings: GLOM levels, RGB head or not, column channels); its
            current weights are every image's starting point.
        steps: int, optimizer steps per image.
        optimizer: a Keras optimizer with an element-wise update (e.g.
            `keras.optimizers.Adam(1e-3)`), used as a template: each batch
            gets a fresh copy (zero moments, the schedule restarted).
        loss: `"mse"` or `"cosine"` for the global term.
        grid_weight: weight of the feature-grid MSE term.
        rgb_weight: weight of the RGB MSE term (needs an RGB head).
        jit_compile: compile the step (`jax.jit`, XLA `tf.function`;
            torch runs eagerly).
        locations_per_step: `None` (every step trains on the whole grid)
            or an int: each step trains on that many grid locations
            (`keras_apm.ttt.subsets.step_indices`, drawn from `seed`).
        seed: int, seeds the subsets.

    Example:
    ```python
    engine = BatchedTTT(student, steps=20, optimizer=keras.optimizers.Adam(1e-3))
    result = engine.adapt(student_inputs, targets)
    result["global"].shape  # (B, D)
    ```
    """

    def __init__(
        self,
        student,
        steps,
        optimizer,
        loss="mse",
        grid_weight=0.0,
        rgb_weight=0.0,
        jit_compile=True,
        locations_per_step=None,
        seed=0,
    ):
        check_number(steps, "`steps`", low=1, integer=True)
        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}. Received {loss!r}")
        check_number(grid_weight, "`grid_weight`", low=0)
        check_number(rgb_weight, "`rgb_weight`", low=0)
        recipes.check_elementwise(optimizer)
        check_student(student, with_rgb=rgb_weight > 0)
        self.student = student
        self.steps = int(steps)
        self.optimizer = optimizer
        self.loss = loss
        self.grid_weight = float(grid_weight)
        self.rgb_weight = float(rgb_weight)
        self.jit_compile = bool(jit_compile)
        self.locations_per_step = check_locations_per_step(
            locations_per_step, student.grid_shape
        )
        self._indices = None
        if self.locations_per_step is not None:
            self._indices = [
                ops.convert_to_tensor(i)
                for i in step_indices(
                    student.grid_shape, self.locations_per_step, self.steps, seed
                )
            ]
        # The layout comes from the student's layers; the values are copied
        # now (float32, whatever the student's policy).
        self._layout = student_weights(student, with_rgb=self.rgb_weight > 0)
        variables = keras.tree.flatten(self._layout)
        self._paths = [v.path for v in variables]
        self.initial_weights = {
            v.path: np.asarray(ops.convert_to_numpy(v), "float32") for v in variables
        }
        self._built_batch_size = None

    def _build(self, batch_size):
        """Stacked variables, a fresh optimizer and the step, for B images."""
        names = self._paths
        self._variables = [
            keras.Variable(
                np.zeros((batch_size,) + self.initial_weights[n].shape, "float32"),
                name=n.replace("/", "__"),
            )
            for n in names
        ]
        # The start of every `adapt`, kept on the device: one copy of the
        # initial weights (broadcast to B at reset time) and the optimizer's
        # fresh state, None where that is all zeros (moments). Resetting
        # from host arrays would copy B stacked models to the device on
        # every call.
        self._initial = [
            ops.convert_to_tensor(self.initial_weights[n]) for n in names
        ]
        self._optimizer = recipes.fresh_optimizer(self.optimizer)
        self._optimizer.build(self._variables)
        self._fresh_state = []
        for variable in self._optimizer.variables:
            fresh = ops.convert_to_numpy(variable)
            self._fresh_state.append(
                ops.convert_to_tensor(fresh) if fresh.any() else None
            )
        model, layout = self.student, self._layout
        loss, weights = self.loss, (self.grid_weight, self.rgb_weight)

        def loss_fn(values, batch):
            params = keras.tree.pack_sequence_as(layout, values)
            per_image = _per_image_loss(model, params, batch, loss, *weights)
            return ops.sum(per_image), per_image

        backend = backend_module()
        self._step = backend.compile_step(
            loss_fn, self._optimizer, self._variables, self.jit_compile
        )
        self._forward = backend.compile_function(
            lambda values, images: batched_forward(
                model, keras.tree.pack_sequence_as(layout, values), images
            )[GLOBAL],
            self.jit_compile,
        )
        self._built_batch_size = batch_size

    def adapt(self, images, targets, grid=None, rgb=None):
        """Runs `steps` updates on B images at once, from the initial weights.

        Args:
            images: `(B, H, W, C)` float32 student inputs (preprocessed).
            targets: `(B, D)` global targets.
            grid: `(B, h, w, D)` grid targets, needed if `grid_weight > 0`.
            rgb: `(B, h, w, 3)` RGB targets, needed if `rgb_weight > 0`.

        Returns:
            dict: `"global"` `(B, D)` (the adapted students' global vectors),
            `"loss"` `(B, steps)` (each image's loss before each update).
        """
        model = self.student
        images = _check(images, (None,) + model.image_shape, "images")
        batch_size = int(images.shape[0])
        (h, w), dim = model.grid_shape, model.feature_dim
        batch = {
            "images": images,
            "target": _check(targets, (batch_size, dim), "targets"),
        }
        if self.grid_weight > 0:
            if grid is None:
                raise ValueError("`grid_weight > 0` needs grid targets.")
            grid = _check(grid, (batch_size, h, w, dim), "grid")
            batch[FEATURES] = ops.reshape(grid, (batch_size, h * w, dim))
        if self.rgb_weight > 0:
            if rgb is None:
                raise ValueError("`rgb_weight > 0` needs RGB targets.")
            rgb = _check(rgb, (batch_size, h, w, 3), "rgb")
            batch[RGB] = ops.reshape(rgb, (batch_size, h * w, 3))
        if self._built_batch_size != batch_size:
            self._build(batch_size)
        # A fresh start for every image: initial weights, zero moments,
        # iteration 0 (so the learning-rate schedule restarts too).
        for variable, value in zip(self._variables, self._initial):
            variable.assign(ops.broadcast_to(value, variable.shape))
        for variable, value in zip(self._optimizer.variables, self._fresh_state):
            variable.assign(
                ops.zeros(variable.shape, variable.dtype) if value is None else value
            )
        losses = []
        for step in range(self.steps):
            if self._indices is not None:
                batch["indices"] = self._indices[step]
            losses.append(self._step(batch))
        values = [v.value for v in self._variables]
        return {
            GLOBAL: self._forward(values, images),
            "loss": ops.stack(losses, axis=1),
        }


def _per_image_loss(model, params, batch, loss, grid_weight, rgb_weight):
    indices = batch.get("indices")
    out = batched_forward(model, params, batch["images"], indices)
    value = global_loss(out[GLOBAL], batch["target"], loss)
    # MSE terms on the grids, keyed by output. The targets are `(B, h*w, C)`
    # rows, taken at the step's locations when it trains on a subset.
    for key, weight in ((FEATURES, grid_weight), (RGB, rgb_weight)):
        if weight > 0:
            target = batch[key]
            if indices is None:
                prediction = ops.reshape(out[key], (-1,) + tuple(target.shape[1:]))
            else:
                prediction = out[key]
                target = ops.take(target, indices, axis=1)
            value = value + weight * ops.mean(
                ops.square(prediction - target), axis=(1, 2)
            )
    return value


def _check(x, shape, name):
    x = ops.convert_to_tensor(x, "float32")
    if len(x.shape) != len(shape) or any(
        s is not None and int(d) != s for d, s in zip(x.shape, shape)
    ):
        raise ValueError(
            f"Expected `{name}` of shape {tuple(shape)}. Received {tuple(x.shape)}."
        )
    return x
