"""keras_apm: the Asynchronous Perception Machine for Keras 3."""

__version__ = "0.1.0"
