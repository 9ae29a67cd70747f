"""The Asynchronous Perception Machine as a keras-hub `Backbone`."""

import math
import keras
from keras import ops
from keras_hub.models import Backbone

from keras_apm.layers.perception_field import PerceptionField
from keras_apm.layers.perception_mlp import PerceptionMLP
from keras_apm.layers.trigger_column import TriggerColumn
from keras_apm.models.apm import apm_outputs
from keras_apm.utils import preset_files
from keras_apm.models.apm.apm_outputs import FEATURES
from keras_apm.models.apm.apm_outputs import GLOBAL
from keras_apm.models.apm.apm_outputs import LEVELS
from keras_apm.models.apm.apm_preset_saving import save_preset_staged
from keras_apm.models.apm.apm_presets import backbone_presets
from keras_apm.utils.keras_hub_compat import register_presets
from keras_apm.utils.memory import check_fits
from keras_apm.utils.memory import format_bytes
from keras_apm.utils.validation import check_array_like
from keras_apm.utils.validation import check_finite
from keras_apm.utils.validation import check_float_dtype
from keras_apm.utils.validation import check_image_batch
from keras_apm.utils.validation import check_locations
from keras_apm.utils.validation import check_positive_int
from keras_apm.utils.validation import check_positive_ints
from keras_apm.utils.validation import static_shape

# Words with which the backends report an exhausted device memory.
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemory", "OOM ")


def _is_out_of_memory(error):
    if isinstance(error, MemoryError):
        return True
    text = f"{type(error).__name__}: {error}"[:20000]
    return any(marker in text for marker in OOM_MARKERS)


def _mlp_widths(trunk_widths, feature_dim, num_levels, rgb_widths):
    widths = [int(w) for w in trunk_widths] + [int(feature_dim) * int(num_levels)]
    if rgb_widths is not None:
        widths += [int(w) for w in rgb_widths] + [3]
    return widths


def _check_model_fits(
    image_shape, patch_size, grid_shape, trigger_dim, position_dim,
    trunk_widths, feature_dim, num_levels, rgb_widths, chunk_size,
):  # fmt: skip
    """Refuses a config whose tensors for one image cannot fit in memory.

    Counted (float32, 4 bytes each, a lower bound): the weights of the MLP
    (the first layer reads `trigger_dim + position_dim` inputs), the grid's
    position codes `(h*w, position_dim)`, one input image, and one image's
    widest activation `(locations per call, width)`.
    """
    locations = grid_shape[0] * grid_shape[1]
    trunk = [int(w) for w in trunk_widths]
    weights = (trigger_dim + position_dim) * trunk[0]
    weights += sum(a * b for a, b in zip(trunk, trunk[1:]))
    weights += trunk[-1] * int(feature_dim) * int(num_levels)
    if rgb_widths is not None:
        rgb = [trunk[-1]] + [int(w) for w in rgb_widths] + [3]
        weights += sum(a * b for a, b in zip(rgb, rgb[1:]))
    per_call = min(int(chunk_size or locations), locations)
    widest = per_call * max(_mlp_widths(trunk, feature_dim, num_levels, rgb_widths))
    image = image_shape[0] * image_shape[1] * image_shape[2]
    values = weights + locations * position_dim + image + widest
    check_fits(
        4 * values,
        f"APM(image_shape={image_shape}, patch_size={patch_size}) (a "
        f"{grid_shape[0]}x{grid_shape[1]} grid, trigger length {trigger_dim}, "
        f"position_dim {position_dim}: {weights} weights, "
        f"{locations * position_dim} position-code values)",
        "Use a smaller `image_shape` or a larger `patch_size` (for a preset: "
        "its config.json).",
    )


@keras.saving.register_keras_serializable(package="keras_apm")
class APM(Backbone):
    """Asynchronous Perception Machine (Modi & Rawat, NeurIPS 2024).

    The column module squeezes the whole image into one trigger column `T`
    (a strided convolution, flattened). `T` unfolds into one query per grid
    location, `[T ; PE(y, x)]`, and one shared MLP answers every query on its
    own: a feature vector per location (distilled from a ViT teacher), an
    optional RGB decode, and optionally one global vector from an
    attention-pool head over the feature grid.

    Calling the model on `(B, H, W, C)` float images returns a dict:
    `"features"` `(B, h, w, D)`; `"rgb"` `(B, h, w, 3)` if `rgb_head`;
    `"levels"` `(B, num_levels, h, w, D)` if `num_levels > 1` (the last level
    is `"features"`); `"global"` `(B, D)` if `global_head`; and one output
    per added head (`extra_heads`). `evaluate_locations` answers any set of
    (fractional) locations. The heads and their targets are declared in the
    head table, `keras_apm.models.apm.apm_outputs`.

    Args:
        image_shape: `(H, W, C)`; `H` and `W` divisible by `patch_size`.
        patch_size: int, kernel and stride of the column convolution.
        trunk_widths: tuple, hidden widths of the shared MLP's trunk.
        feature_dim: int, width `D` of the features.
        position_dim: int divisible by 4, width of the position code; default
            the trigger column's length (the official choice, `d = n`).
        column_channels: int, output channels of the column convolution.
        num_levels: int, feature heads (GLOM levels), default 1.
        rgb_head: bool, whether the RGB head exists.
        rgb_widths: tuple, hidden widths of the RGB head.
        rgb_activation: final activation of the RGB head (official `"relu"`).
        global_head: bool, whether the attention-pool global head exists.
        global_num_heads: int, attention heads of the global head.
        chunk_size: int or None, locations per MLP call (None: all at once).
        fast_path: bool, compute the trigger column's share of the first
            layer once per image (exact algebra) instead of building queries.
        extra_heads: names of heads added to the head table
            (`apm_outputs.register_head`), each computed by its row's layer
            on the grid it reads; or a dict from name to such a layer (as
            `get_config` stores them: `{"layer": ..., "input": ...}`).
        dtype: dtype policy, e.g. `"float32"` or `"mixed_bfloat16"`.

    Example:
    ```python
    model = keras_apm.APM(
        image_shape=(32, 32, 3), patch_size=4, trunk_widths=(128, 64),
        feature_dim=32, global_head=True, global_num_heads=4,
    )
    out = model(np.random.rand(2, 32, 32, 3).astype("float32"))
    out["features"].shape  # (2, 8, 8, 32)
    ```
    """

    def __init__(
        self,
        image_shape=(448, 448, 3),
        patch_size=14,
        trunk_widths=(4096, 2048, 1024),
        feature_dim=768,
        position_dim=None,
        column_channels=1,
        num_levels=1,
        rgb_head=True,
        rgb_widths=(256, 256),
        rgb_activation="relu",
        global_head=False,
        global_num_heads=8,
        chunk_size=None,
        fast_path=True,
        extra_heads=(),
        dtype=None,
        **kwargs,
    ):
        arguments = dict(locals())
        image_shape = check_positive_ints(image_shape, "image_shape")
        if len(image_shape) != 3:
            raise ValueError(
                "`image_shape` must be (height, width, channels). "
                f"Received: image_shape={image_shape}"
            )
        patch_size = check_positive_int(patch_size, "patch_size")
        check_positive_ints(trunk_widths, "trunk_widths")
        check_positive_int(feature_dim, "feature_dim")
        check_positive_int(position_dim, "position_dim", allow_none=True)
        check_positive_int(column_channels, "column_channels")
        check_positive_int(num_levels, "num_levels")
        if rgb_head:
            check_positive_ints(rgb_widths, "rgb_widths")
        check_positive_int(chunk_size, "chunk_size", allow_none=True)
        if global_head:
            check_positive_int(global_num_heads, "global_num_heads")
            if int(feature_dim) % int(global_num_heads):
                raise ValueError(
                    "`feature_dim` must be divisible by `global_num_heads`. "
                    f"Received: feature_dim={feature_dim}, "
                    f"global_num_heads={global_num_heads}"
                )
        check_image_batch((None,) + image_shape, patch_size=patch_size)
        grid_shape = (image_shape[0] // patch_size, image_shape[1] // patch_size)
        trigger_dim = grid_shape[0] * grid_shape[1] * int(column_channels)
        if position_dim is None:
            position_dim = trigger_dim
        if int(position_dim) % 4:
            raise ValueError(
                "`position_dim` must be divisible by 4 (it defaults to the "
                f"trigger length h*w*column_channels = {trigger_dim}). "
                f"Received: position_dim={position_dim}"
            )
        if global_head and int(feature_dim) % 4:
            raise ValueError(
                "The global head adds a sine/cosine code of width "
                f"feature_dim, which must be divisible by 4. Received "
                f"feature_dim={feature_dim}"
            )

        _check_model_fits(
            image_shape, patch_size, grid_shape, trigger_dim, int(position_dim),
            trunk_widths, feature_dim, num_levels,
            rgb_widths if rgb_head else None, chunk_size,
        )  # fmt: skip

        # === Layers ===
        self.column = TriggerColumn(
            patch_size, channels=column_channels, dtype=dtype, name="column"
        )
        mlp = PerceptionMLP(
            trunk_widths, feature_dim, num_levels=num_levels,
            rgb_head=rgb_head, rgb_widths=rgb_widths,
            rgb_activation=rgb_activation, dtype=dtype, name="mlp",
        )  # fmt: skip
        self.field = PerceptionField(
            grid_shape, position_dim, mlp, chunk_size=chunk_size,
            fast_path=fast_path, dtype=dtype, name="field",
        )  # fmt: skip
        grid_heads = _grid_heads(arguments, extra_heads)
        self.global_pool = grid_heads.get(GLOBAL, (None, None))[0]

        # === Functional model ===
        images = keras.Input(shape=image_shape, name="images")
        trigger = self.column(images)
        answers = self.field(trigger)
        outputs = self._to_grid(answers, grid_shape)
        for name, (layer, source) in grid_heads.items():
            outputs[name] = layer(outputs[source])
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, **kwargs)

        # === Config ===
        self.image_shape = image_shape
        self.patch_size = int(patch_size)
        self.trunk_widths = tuple(int(w) for w in trunk_widths)
        self.feature_dim = int(feature_dim)
        self.position_dim = int(position_dim)
        self.column_channels = int(column_channels)
        self.num_levels = int(num_levels)
        self.rgb_head = bool(rgb_head)
        self.rgb_widths = tuple(int(w) for w in rgb_widths)
        self.rgb_activation = rgb_activation
        self.global_head = bool(global_head)
        self.global_num_heads = int(global_num_heads)
        self.chunk_size = self.field.chunk_size
        self.fast_path = bool(fast_path)
        self.grid_shape = grid_shape
        # `{output: (layer, the output it reads)}` of the heads on the grid.
        self._grid_heads = grid_heads
        self.extra_heads = tuple(n for n in grid_heads if n not in apm_outputs.BUILT_IN)
        # Reading values back costs a device sync, so the NaN/Inf check on
        # eager calls is opt-in: `model.check_finite = True`.
        self.check_finite = False

    @staticmethod
    def _to_grid(answers, grid_shape):
        h, w = grid_shape
        grid = {}
        for key, value in answers.items():
            if key == LEVELS:
                # (B, n, L, D) -> (B, L, h, w, D)
                levels, dim = value.shape[-2], value.shape[-1]
                value = ops.reshape(value, (-1, h, w, levels, dim))
                grid[key] = ops.transpose(value, (0, 3, 1, 2, 4))
            else:
                grid[key] = ops.reshape(value, (-1, h, w, value.shape[-1]))
        return grid

    # --- input checks -----------------------------------------------------
    def _check_images(self, images):
        check_array_like(
            images,
            "images",
            f"of shape (batch, {', '.join(map(str, self.image_shape))})",
        )
        check_image_batch(
            images, patch_size=self.patch_size, image_shape=self.image_shape
        )
        check_float_dtype(images)
        if self.check_finite:
            check_finite(images)

    def _empty_outputs(self):
        """The model's outputs for a batch of 0 images (every key, B = 0)."""
        return {
            key: ops.zeros((0,) + tuple(value.shape[1:]), dtype=value.dtype)
            for key, value in self.output.items()
        }

    def __call__(self, images, *args, **kwargs):
        # Keras' own input-spec errors name layers, not shapes; ours say what
        # an APM expects. Skipped for the symbolic tensors of model building.
        if not isinstance(images, keras.KerasTensor) and not isinstance(
            images, dict
        ):
            self._check_images(images)
            if images.shape[0] == 0:
                # Some backends fail on 0-row matmuls: answer directly.
                return self._empty_outputs()
        return super().__call__(images, *args, **kwargs)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, **kwargs):
        """`keras.Model.predict` with the APM's input checks and clear errors.

        Arrays are checked like `model(x)` (shape, dtype, and NaN/Inf when
        `model.check_finite` is set); 0 images give empty outputs; running
        out of device memory raises a `MemoryError` that says so first.

        Example:
        >>> out = model.predict(images, batch_size=32)
        """
        if hasattr(x, "shape") or isinstance(x, (list, tuple, str, bytes)):
            self._check_images(x)
            if x.shape[0] == 0:
                return {
                    k: ops.convert_to_numpy(v)
                    for k, v in self._empty_outputs().items()
                }
        try:
            return super().predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps, **kwargs
            )
        except Exception as e:
            self._raise_if_out_of_memory(e, "predict", "batch_size")
            raise

    @staticmethod
    def _raise_if_out_of_memory(error, where, knob):
        if _is_out_of_memory(error):
            first = str(error).strip().splitlines()[0][:300] if str(error) else ""
            raise MemoryError(
                f"Out of device memory in APM.{where}: use a smaller `{knob}`."
                f"\nBackend error ({type(error).__name__}): {first}"
            ) from error

    # --- the asynchronous interface ---------------------------------------
    def trigger_column(self, images):
        """The `(B, n)` trigger columns of a batch of images.

        Example:
        >>> trigger = model.trigger_column(images)  # once per image
        """
        self._check_images(images)
        if images.shape[0] == 0:
            n = self.grid_shape[0] * self.grid_shape[1] * self.column_channels
            return ops.zeros((0, n), dtype=self.compute_dtype)
        return self.column(ops.convert_to_tensor(images))

    def evaluate_locations(
        self, images=None, locations=None, trigger=None, chunk_size="default"
    ):
        """Answers any set of locations, in any order, `chunk_size` at a time.

        The trigger column is computed once per image (or passed in), then
        each location's query is answered independently, so the result does
        not depend on the order of `locations` or on `chunk_size`.

        Args:
            images: `(B, H, W, C)` float images, or None if `trigger` is given.
            locations: `(L, 2)` `(y, x)` in grid units, integer or fractional,
                with `0 <= y <= h - 1` and `0 <= x <= w - 1`. Default: the
                whole grid, row-major.
            trigger: `(B, n)` trigger columns from `trigger_column`.
            chunk_size: locations per MLP call; `"default"` uses the model's,
                None evaluates all locations in one call.

        Returns:
            dict with `"features"` `(B, L, D)`, `"rgb"` `(B, L, 3)` if the RGB
            head exists and `"levels"` `(B, L, num_levels, D)` if several.

        Example:
        ```python
        locations = np.array([[0.5, 3.25], [7, 0]], "float32")
        out = model.evaluate_locations(images, locations, chunk_size=1)
        out["features"].shape  # (B, 2, D)
        ```
        """
        if (images is None) == (trigger is None):
            raise ValueError(
                "Pass exactly one of `images` (B, H, W, C) or `trigger` "
                f"(B, n). Received images={'set' if images is not None else None}"
                f", trigger={'set' if trigger is not None else None}."
            )
        if trigger is None:
            trigger = self.trigger_column(images)
        else:
            n = self.grid_shape[0] * self.grid_shape[1] * self.column_channels
            check_array_like(trigger, "trigger", f"of shape (batch, {n})")
            shape = tuple(trigger.shape)
            if len(shape) != 2 or shape[1] != n:
                raise ValueError(
                    f"Expected trigger columns of shape (batch, {n}). "
                    f"Received shape {shape}."
                )
            # Refused like integer images, on every backend alike.
            check_float_dtype(trigger, "trigger columns")
        if locations is not None:
            # Arrays only: a (possibly ragged) list is small, and
            # `check_locations` names what is wrong with it.
            shape = tuple(getattr(locations, "shape", ()))
            if len(shape) == 2 and shape[0] is not None and trigger.shape[0]:
                # Before `check_locations`, which reads every location.
                self._check_answers_fit(trigger.shape[0], shape[0], chunk_size)
            check_locations(locations, self.grid_shape)
            num_locations = static_shape(locations)[0]
        else:
            num_locations = self.grid_shape[0] * self.grid_shape[1]
        if trigger.shape[0] == 0 or num_locations == 0:
            # Some backends fail on 0-row matmuls: answer directly.
            return self._empty_answers(trigger.shape[0], num_locations)
        try:
            if locations is None:
                return self.field(trigger, chunk_size=chunk_size)
            locations = ops.cast(ops.convert_to_tensor(locations), "float32")
            return self.field(trigger, locations=locations, chunk_size=chunk_size)
        except Exception as e:
            self._raise_if_out_of_memory(
                e, "evaluate_locations", "chunk_size (or batch)"
            )
            raise

    def _check_answers_fit(self, batch, num_locations, chunk_size):
        """Refuses a call whose answers cannot fit in memory, up front.

        Counted (4 bytes each, a lower bound): the answers `(B, L, width)`
        of every output, and per MLP call the position codes and the widest
        activation of `chunk_size` locations (all `L` for None).
        """
        if chunk_size == "default":
            chunk_size = self.chunk_size
        per_call = min(int(chunk_size or num_locations), num_locations)
        # Every output the MLP answers per location (the head table's rows).
        out_width = sum(
            math.prod(shape) for shape in self.field.mlp.output_shapes().values()
        )
        widest = max(
            _mlp_widths(
                self.trunk_widths, self.feature_dim, self.num_levels,
                self.rgb_widths if self.rgb_head else None,
            )  # fmt: skip
        )
        answers = batch * num_locations * out_width
        working = batch * per_call * widest + per_call * self.position_dim
        needed = 4 * (answers + working)
        fix = "Evaluate fewer locations (or images) per call" + (
            ", or pass a smaller `chunk_size` (locations per MLP call)."
            if working > answers
            else "."
        )
        check_fits(
            needed,
            f"APM.evaluate_locations on {batch} image(s) x {num_locations} "
            f"locations (answers: {format_bytes(4 * answers)}; per MLP call "
            f"of {per_call} locations: {format_bytes(4 * working)})",
            fix,
        )

    def _empty_answers(self, batch, num_locations):
        dtype = self.compute_dtype
        return {
            key: ops.zeros((batch, num_locations) + tuple(tail), dtype)
            for key, tail in self.field.mlp.output_shapes().items()
        }

    def head_layer(self, name):
        """The layer that computes output `name` on the grid (the global
        head, an added head).

        Example:
        >>> model.head_layer("global") is model.global_pool
        True
        """
        if name not in self._grid_heads:
            raise ValueError(
                f"This APM has no head on the grid named {name!r}. It has "
                f"{sorted(self._grid_heads)}."
            )
        return self._grid_heads[name][0]

    # --- explicit weights (batched test-time training) ---------------------
    def explicit_weights(self, outputs=None):
        """The weights `call_with_weights` takes, in the layers' layout.

        `{"column": ..., "field": ..., <head on the grid>: ...}`, each entry
        a layer's `explicit_weights()`.

        Args:
            outputs: None (every output), or the output names to compute:
                heads left out get no weights and are not computed.

        Example:
        >>> weights = model.explicit_weights(outputs=("features", "global"))
        """
        weights = {
            "column": self.column.explicit_weights(),
            "field": self.field.explicit_weights(outputs),
        }
        for name, (layer, _) in self._grid_heads.items():
            if outputs is None or name in outputs:
                weights[name] = layer.explicit_weights()
        return weights

    def call_with_weights(self, weights, images, chunk_size="default"):
        """`model(images)` from explicit weights, the model's or one set per
        image (every weight with a leading image axis `B`).

        Runs the same layers as the model (column -> field -> grid -> the
        heads on the grid), each from its weights; outputs whose weights are
        left out (`explicit_weights(outputs=...)`) are not computed.

        Example:
        >>> out = model.call_with_weights(model.explicit_weights(), x)
        """
        trigger = self.column.call_with_weights(weights["column"], images)
        answers = self.field.call_with_weights(
            weights["field"], trigger, chunk_size=chunk_size
        )
        outputs = self._to_grid(answers, self.grid_shape)
        for name, (layer, source) in self._grid_heads.items():
            if name in weights:
                outputs[name] = layer.call_with_weights(
                    weights[name], outputs[source]
                )
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_shape": self.image_shape,
                "patch_size": self.patch_size,
                "trunk_widths": self.trunk_widths,
                "feature_dim": self.feature_dim,
                "position_dim": self.position_dim,
                "column_channels": self.column_channels,
                "num_levels": self.num_levels,
                "rgb_head": self.rgb_head,
                "rgb_widths": self.rgb_widths,
                "rgb_activation": self.rgb_activation,
                "global_head": self.global_head,
                "global_num_heads": self.global_num_heads,
                "chunk_size": self.chunk_size,
                "fast_path": self.fast_path,
            }
        )
        if self.extra_heads:
            # The layers themselves: a saved model reloads without the
            # table row (its class must be importable, as for any Keras
            # custom layer).
            config["extra_heads"] = {
                name: {
                    "layer": keras.saving.serialize_keras_object(
                        self._grid_heads[name][0]
                    ),
                    "input": self._grid_heads[name][1],
                }
                for name in self.extra_heads
            }
        return config

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Saves the model to a preset directory, staged and checksummed.

        The files are written beside `preset_dir` and swapped in at once,
        with a `checksums.json` that `from_preset` verifies: a full disk or
        a crash leaves the old preset (or none), never a partial one. Other
        files already in `preset_dir` (an image converter) are kept.

        Example:
        ```python
        model.save_to_preset("./my_apm")
        keras_apm.APM.from_preset("./my_apm")
        ```
        """
        save_super = super().save_to_preset
        return save_preset_staged(
            preset_dir, lambda staged: save_super(staged, max_shard_size)
        )

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """Loads an APM from a preset: a built-in name, a `kaggle://` or
        `hf://` handle, or a local directory.

        The preset is checked first: a local directory must hold a readable
        `config.json` and weights whose tensors match the model exactly, and
        a download that fails names the handle.

        Example:
        ```python
        model = keras_apm.APM.from_preset("apm_tiny_digits")
        model = keras_apm.APM.from_preset("./my_converted_apm")
        ```
        """
        return preset_files.load_backbone(
            cls, super().from_preset, preset, load_weights, **kwargs
        )



def _grid_heads(arguments, extra_heads):
    """`{name: (layer, input)}` of the heads on the grid, in table order:
    the built-in ones the arguments switch on, then `extra_heads`."""
    heads = {}
    for row in apm_outputs.grid_heads():
        if row.enabled is not None and row.enabled(arguments):
            heads[row.name] = (row.layer(arguments), row.input)
    if isinstance(extra_heads, str):
        extra_heads = (extra_heads,)
    if isinstance(extra_heads, dict):
        items = extra_heads.items()
    else:
        items = [(name, None) for name in extra_heads]
    for name, given in items:
        if name in heads or name in apm_outputs.BUILT_IN:
            raise ValueError(
                f"`extra_heads` lists {name!r}, a built-in output; switch "
                "built-in heads on with their own arguments (`global_head`)."
            )
        if given is None:
            row = apm_outputs.get_head(name)
            if row.enabled is not None:
                raise ValueError(
                    f"The head {name!r} is switched on by an APM argument, "
                    "not by `extra_heads`."
                )
            layer, source = row.layer(arguments), row.input
        else:
            given = dict(given) if isinstance(given, dict) else {"layer": given}
            layer, source = given["layer"], given.get("input", FEATURES)
            if isinstance(layer, dict):
                layer = keras.saving.deserialize_keras_object(layer)
        for method in ("explicit_weights", "call_with_weights"):
            if not callable(getattr(layer, method, None)):
                raise ValueError(
                    f"The layer of head {name!r} ({type(layer).__name__}) "
                    f"needs a `{method}` method, so that batched test-time "
                    "training runs its math (see `AttentionPoolHead`)."
                )
        heads[name] = (layer, source)
    return heads


# Makes the shipped presets (`apm_tiny_digits`) loadable by name wherever
# `APM` itself is, as keras-hub registers each model's presets.
register_presets(backbone_presets, APM)
