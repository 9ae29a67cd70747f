"""The column module: squeezes a whole image into one trigger column."""

import keras
from keras import ops

from keras_apm.layers.output_spec import output_spec
from keras_apm.utils.validation import check_image_batch


@keras.saving.register_keras_serializable(package="keras_apm")
class TriggerColumn(keras.layers.Layer):
    """Strided convolution that turns an image into the trigger column T.

    The official column is a `Conv2d(3 -> 1, kernel=p, stride=p)` whose `(h, w)`
    map is flattened row-major (index `y * w + x`). With `channels > 1` the
    flattening order is `(y, x, channel)`.

    Args:
        patch_size: int, kernel size and stride `p`.
        channels: int, output channels of the convolution (official: 1).
        kernel_initializer, bias_initializer: Keras initializers.

    Example:
    >>> column = TriggerColumn(patch_size=14)
    >>> column(np.zeros((2, 448, 448, 3), "float32")).shape
    (2, 1024)
    """

    def __init__(
        self,
        patch_size,
        channels=1,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.channels = int(channels)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.conv = keras.layers.Conv2D(
            self.channels,
            self.patch_size,
            strides=self.patch_size,
            padding="valid",
            data_format="channels_last",
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            dtype=self.dtype_policy,
            name="conv",
        )

    def build(self, images_shape):
        check_image_batch(images_shape, patch_size=self.patch_size)
        self.conv.build(images_shape)
        self.built = True

    def explicit_weights(self):
        """`{"kernel", "bias"}`: the convolution's variables."""
        return {"kernel": self.conv.kernel, "bias": self.conv.bias}

    def call_with_weights(self, weights, images):
        """The trigger columns from explicit weights.

        Args:
            weights: `{"kernel": (p, p, C, c), "bias": (c,)}`, or stacked
                `(B, p, p, C, c)` and `(B, c)`: one set per image.
            images: `(B, H, W, C)`; the dtype is the compute dtype.

        Returns:
            `(B, h * w * c)` trigger columns, flattened `(y, x, channel)`.
        """
        kernel = ops.cast(weights["kernel"], images.dtype)
        bias = ops.cast(weights["bias"], images.dtype)
        if len(kernel.shape) == 4:
            x = ops.conv(
                images, kernel, strides=self.patch_size, padding="valid",
                data_format="channels_last",
            )
            x = x + bias
        else:
            # One kernel per image: a valid convolution with kernel = stride
            # = p is a contraction over the (p, p, C) patches.
            p = self.patch_size
            _, height, width, channels = images.shape
            patches = ops.reshape(
                images, (-1, height // p, p, width // p, p, channels)
            )
            # (B, h * w, p * p * C) @ (B, p * p * C, c): a matmul, whose
            # gradient LiteRT runs with builtin ops (on-device TTT).
            h, w = height // p, width // p
            patches = ops.reshape(
                ops.transpose(patches, (0, 1, 3, 2, 4, 5)),
                (-1, h * w, p * p * channels),
            )
            kernel = ops.reshape(kernel, (-1, p * p * channels, self.channels))
            x = ops.matmul(patches, kernel) + ops.expand_dims(bias, 1)
            x = ops.reshape(x, (-1, h, w, self.channels))
        # A static width keeps the trigger's shape known to later layers
        # (and to exporters); -1 only when the image size is dynamic.
        h, w = x.shape[1], x.shape[2]
        width = -1 if h is None or w is None else h * w * self.channels
        return ops.reshape(x, (ops.shape(x)[0], width))

    def call(self, images):
        # Keras autocasts float inputs only: integer pixels would cast the
        # kernel to integers (a zero column) on every backend.
        images = ops.convert_to_tensor(images)
        if not keras.backend.is_float_dtype(images.dtype):
            images = ops.cast(images, self.compute_dtype)
        return self.call_with_weights(self.explicit_weights(), images)

    def compute_output_spec(self, images):
        return output_spec(self, images)

    def compute_output_shape(self, images_shape):
        h = images_shape[1] // self.patch_size
        w = images_shape[2] // self.patch_size
        return (images_shape[0], h * w * self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "patch_size": self.patch_size,
                "channels": self.channels,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "bias_initializer": keras.initializers.serialize(
                    self.bias_initializer
                ),
            }
        )
        return config
