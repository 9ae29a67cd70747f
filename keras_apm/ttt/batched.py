"""Batched test-time training: B images, B independent students, one step.

Adapting one image at a time leaves the hardware idle (the official code
feeds 8 copies of the image to fill a GPU). Here every weight of the student
gets a leading *image axis*: image `b` is answered by `params[name][b]` only,
every layer is a batched matrix product, and the loss is the *sum* of the
per-image losses, so the gradient reaching `params[name][b]` is exactly the
gradient of image `b`'s own loss. The optimizer is a Keras optimizer whose
update is element-wise (`recipes.ELEMENTWISE_OPTIMIZERS`), so each image also
has its own moments. One compiled step therefore adapts B images as B
separate runs would; `tests/test_ttt.py` checks it against Keras'
`train_on_batch` on the real `APM`, one image at a time.

The forward pass uses `keras.ops` only; differentiating and compiling the
step is the backend-specific part (`keras_apm.backend`).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_apm.backend import backend_module
from keras_apm.layers.position_encoding import grid_locations
from keras_apm.layers.position_encoding import sincos_position_encoding_2d
from keras_apm.ttt import recipes

LOSSES = ("mse", "cosine")


class StudentSpec:
    """What the batched forward pass needs to know about an `APM`."""

    def __init__(self, model, with_rgb=False):
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
        if model.num_levels != 1:
            raise ValueError(
                "Batched test-time training supports students with one level "
                f"(num_levels=1). Received num_levels={model.num_levels}."
            )
        if with_rgb and not model.rgb_head:
            raise ValueError("`rgb_weight > 0` needs a student with `rgb_head=True`.")
        self.grid_shape = tuple(model.grid_shape)
        self.patch_size = int(model.patch_size)
        self.image_shape = tuple(model.image_shape)
        self.feature_dim = int(model.feature_dim)
        self.num_trunk = len(model.trunk_widths)
        self.key_dim = self.feature_dim // int(model.global_num_heads)
        self.activation = model.field.mlp.activation
        self.rgb_activation = model.field.mlp.rgb_activation
        self.num_rgb = len(model.rgb_widths) + 1 if with_rgb else 0
        h, w = self.grid_shape
        self.trigger_dim = h * w * int(model.column_channels)
        # The constant position codes of the trunk and of the global head at
        # every grid location, row-major as the APM evaluates them.
        locations = grid_locations((h, w))
        self.trunk_codes = ops.convert_to_numpy(
            sincos_position_encoding_2d(locations, int(model.position_dim))
        )
        self.global_codes = ops.convert_to_numpy(
            sincos_position_encoding_2d(locations, self.feature_dim)
        )

    def param_names(self):
        """Paths (as in `APM.weights`) of the weights the loss depends on.

        The attention's key bias is left out: with one query it adds the
        same number to every location's score, which the softmax cancels.
        """
        layers = ["column/conv"]
        layers += [f"field/mlp/trunk_{i}" for i in range(self.num_trunk)]
        layers += ["field/mlp/feature_head"]
        layers += [f"field/mlp/rgb_{i}" for i in range(self.num_rgb)]
        attention = "global_head/attention/"
        layers += [attention + p for p in ("query", "value", "attention_output")]
        names = [f"{layer}/{w}" for layer in layers for w in ("kernel", "bias")]
        return names + ["global_head/query", attention + "key/kernel"]


def batched_forward(params, images, spec, with_features=False):
    """The APM's forward pass with one set of weights per image.

    Equal to calling `APM` `b` with weights `params[name][b]` on `images[b]`
    (float rounding aside).

    Args:
        params: dict `{path: (B, ...) tensor}`.
        images: `(B, H, W, C)` float32 student inputs (preprocessed).
        spec: a `StudentSpec`.
        with_features: also return `"features"` `(B, L, D)` and, with an RGB
            head, `"rgb"` `(B, L, 3)`.

    Returns:
        dict with `"global"` `(B, D)` (and the features when asked).
    """
    h, w = spec.grid_shape
    p = spec.patch_size
    batch, channels = ops.shape(images)[0], images.shape[-1]
    # The column: a valid convolution with kernel = stride = p is a
    # contraction over (p, p, C) patches, here with each image's own kernel.
    patches = ops.reshape(images, (batch, h, p, w, p, channels))
    trigger = ops.einsum("byixjc,bijco->byxo", patches, params["column/conv/kernel"])
    trigger = trigger + params["column/conv/bias"][:, None, None, :]
    trigger = ops.reshape(trigger, (batch, spec.trigger_dim))

    # First trunk layer, split as `PerceptionMLP` does: [T ; PE] @ K =
    # T @ K[:n] (once per image) + PE @ K[n:] (per location).
    n = spec.trigger_dim
    codes = ops.convert_to_tensor(spec.trunk_codes, "float32")[None]
    kernel = params["field/mlp/trunk_0/kernel"]
    x = ops.matmul(trigger[:, None, :], kernel[:, :n]) + ops.matmul(
        codes, kernel[:, n:]
    )
    x = spec.activation(x + params["field/mlp/trunk_0/bias"][:, None])
    for i in range(1, spec.num_trunk):
        x = _dense(params, f"field/mlp/trunk_{i}", x, spec.activation)
    features = _dense(params, "field/mlp/feature_head", x)

    outputs = {"global": _attention_pool(params, features, spec)}
    if with_features:
        outputs["features"] = features
        if spec.num_rgb:
            outputs["rgb"] = _rgb(params, features, trigger, codes, spec)
    return outputs


def _dense(params, name, x, activation=None):
    x = ops.matmul(x, params[name + "/kernel"]) + params[name + "/bias"][:, None]
    return x if activation is None else activation(x)


def _rgb(params, features, trigger, codes, spec):
    d, n = spec.feature_dim, spec.trigger_dim
    kernel = params["field/mlp/rgb_0/kernel"]
    # [f ; T ; PE] @ K, split like the trunk's first layer.
    x = (
        ops.matmul(features, kernel[:, :d])
        + ops.matmul(trigger[:, None, :], kernel[:, d : d + n])
        + ops.matmul(codes, kernel[:, d + n :])
        + params["field/mlp/rgb_0/bias"][:, None]
    )
    x = ops.relu(x)
    for i in range(1, spec.num_rgb):
        last = i == spec.num_rgb - 1
        x = _dense(
            params, f"field/mlp/rgb_{i}", x, spec.rgb_activation if last else ops.relu
        )
    return x


def _attention_pool(params, features, spec):
    """`AttentionPoolHead` (one learned query) with each image's weights.

    Keras' `MultiHeadAttention` projects all L keys and values (L x D x D
    multiply-adds each). One query needs only D x D work: location l's score
    in head h is `keys[l] . (W_k[:, h] q_h)` (plus `b_k[h] . q_h`, the same
    for every l, which the softmax cancels), and since the attention weights
    sum to 1, `sum_l a_l (keys[l] W_v + b_v) = (sum_l a_l keys[l]) W_v + b_v`.
    """
    prefix = "global_head/attention/"
    keys = features + ops.convert_to_tensor(spec.global_codes, "float32")[None]
    query = ops.einsum(
        "bd,bdhk->bhk", params["global_head/query"], params[prefix + "query/kernel"]
    )
    query = (query + params[prefix + "query/bias"]) / math.sqrt(spec.key_dim)
    folded = ops.einsum("bdhk,bhk->bdh", params[prefix + "key/kernel"], query)
    weights = ops.softmax(ops.matmul(keys, folded), axis=1)  # (B, L, heads)
    pooled = ops.einsum("blh,bld->bhd", weights, keys)
    values = ops.einsum("bhd,bdhk->bhk", pooled, params[prefix + "value/kernel"])
    values = values + params[prefix + "value/bias"]
    out = ops.einsum("bhk,bhke->be", values, params[prefix + "attention_output/kernel"])
    return out + params[prefix + "attention_output/bias"]


def global_loss(prediction, target, loss):
    """Per-image loss between `(B, D)` vectors.

    `"mse"`: mean over D (Keras' `"mse"`); `"cosine"`: `1 - cos` (Keras'
    `CosineSimilarity` loss plus 1, with its epsilon).
    """
    if loss == "mse":
        return ops.mean(ops.square(prediction - target), axis=-1)
    prediction = prediction * ops.rsqrt(
        ops.maximum(ops.sum(ops.square(prediction), axis=-1, keepdims=True), 1e-12)
    )
    target = target * ops.rsqrt(
        ops.maximum(ops.sum(ops.square(target), axis=-1, keepdims=True), 1e-12)
    )
    return 1.0 - ops.sum(prediction * target, axis=-1)


class BatchedTTT:
    """Adapts B students (one per image) in one compiled step.

    Every image gets its own copy of the student's weights and its own
    optimizer state, both reset for every call of `adapt`, and `steps`
    updates regress each student's global vector onto its own image's target
    (plus optional MSE terms on the feature grid and the RGB head).

    Args:
        student: a `keras_apm.APM` with `global_head=True`; its current
            weights are every image's starting point.
        steps: int, optimizer steps per image.
        optimizer: a Keras optimizer with an element-wise update (e.g.
            `keras.optimizers.Adam(1e-3)`), used as a template: each batch
            gets a fresh copy (zero moments, the schedule restarted).
        loss: `"mse"` or `"cosine"` for the global term.
        grid_weight: weight of the feature-grid MSE term.
        rgb_weight: weight of the RGB MSE term (needs an RGB head).
        jit_compile: compile the step (`jax.jit`, XLA `tf.function`;
            torch runs eagerly).

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
    ):
        if (
            isinstance(steps, bool)
            or not isinstance(steps, (int, np.integer))
            or steps < 1
        ):
            raise ValueError(f"`steps` must be a positive int. Received {steps!r}")
        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}. Received {loss!r}")
        for name, value in (("grid_weight", grid_weight), ("rgb_weight", rgb_weight)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(
                    f"`{name}` must be a finite number >= 0. Received {value!r}"
                )
        recipes.check_elementwise(optimizer)
        self.spec = StudentSpec(student, with_rgb=rgb_weight > 0)
        self.steps = int(steps)
        self.optimizer = optimizer
        self.loss = loss
        self.grid_weight = float(grid_weight)
        self.rgb_weight = float(rgb_weight)
        self.jit_compile = bool(jit_compile)
        by_path = {v.path: v for v in student.weights}
        missing = [n for n in self.spec.param_names() if n not in by_path]
        if missing:
            raise ValueError(
                f"The student has no weights {missing}; batched test-time "
                "training expects the layout of `keras_apm.APM`."
            )
        self.initial_weights = {
            name: np.asarray(ops.convert_to_numpy(by_path[name]), "float32")
            for name in self.spec.param_names()
        }
        self._built_batch_size = None

    def _build(self, batch_size):
        """Stacked variables, a fresh optimizer and the step, for B images."""
        names = self.spec.param_names()
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
        spec, loss, weights = self.spec, self.loss, (self.grid_weight, self.rgb_weight)

        def loss_fn(values, batch):
            per_image = _per_image_loss(
                dict(zip(names, values)), batch, spec, loss, *weights
            )
            return ops.sum(per_image), per_image

        backend = backend_module()
        self._step = backend.compile_step(
            loss_fn, self._optimizer, self._variables, self.jit_compile
        )
        self._forward = backend.compile_function(
            lambda values, images: batched_forward(
                dict(zip(names, values)), images, spec
            )["global"],
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
        images = _check(images, (None,) + self.spec.image_shape, "images")
        batch_size = int(images.shape[0])
        h, w = self.spec.grid_shape
        batch = {
            "images": images,
            "target": _check(targets, (batch_size, self.spec.feature_dim), "targets"),
        }
        if self.grid_weight > 0:
            if grid is None:
                raise ValueError("`grid_weight > 0` needs grid targets.")
            grid = _check(grid, (batch_size, h, w, self.spec.feature_dim), "grid")
            batch["grid"] = ops.reshape(grid, (batch_size, h * w, -1))
        if self.rgb_weight > 0:
            if rgb is None:
                raise ValueError("`rgb_weight > 0` needs RGB targets.")
            batch["rgb"] = ops.reshape(
                _check(rgb, (batch_size, h, w, 3), "rgb"), (batch_size, h * w, 3)
            )
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
        losses = [self._step(batch) for _ in range(self.steps)]
        values = [v.value for v in self._variables]
        return {
            "global": self._forward(values, images),
            "loss": ops.stack(losses, axis=1),
        }


def _per_image_loss(params, batch, spec, loss, grid_weight, rgb_weight):
    out = batched_forward(
        params, batch["images"], spec, grid_weight > 0 or rgb_weight > 0
    )
    value = global_loss(out["global"], batch["target"], loss)
    if grid_weight > 0:
        value = value + grid_weight * ops.mean(
            ops.square(out["features"] - batch["grid"]), axis=(1, 2)
        )
    if rgb_weight > 0:
        value = value + rgb_weight * ops.mean(
            ops.square(out["rgb"] - batch["rgb"]), axis=(1, 2)
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
