"""`output_spec`: a layer's symbolic output, read from its arguments.

Keras' default `compute_output_spec` passes on the shapes of backend
tensors only, so NumPy input (as keras-hub's harness and users pass) would
arrive as None; the APM layers read the shapes from the arguments
themselves.

Example:
```python
def compute_output_spec(self, features):
    return output_spec(self, features)
```
"""

import keras


def output_spec(layer, *inputs):
    """`keras.KerasTensor` of `layer.compute_output_shape(*input_shapes)`,
    in the layer's compute dtype."""
    shapes = [tuple(x.shape) for x in inputs]
    return keras.KerasTensor(
        layer.compute_output_shape(*shapes), dtype=layer.compute_dtype
    )
