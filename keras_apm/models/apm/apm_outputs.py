"""The names of an `APM`'s outputs, for every module that reads them.

`APM(images)` returns a dict with these keys (see `keras_apm.APM`); the
distiller, the exporter, TTT and the pictures read them by these names.

Example:
>>> from keras_apm.models.apm import apm_outputs
>>> model(images)[apm_outputs.FEATURES].shape  # (B, h, w, D)
"""

# The feature grid `(B, h, w, D)`; with GLOM levels, the top level.
FEATURES = "features"
# The RGB decode `(B, h, w, 3)`, when the model has an RGB head.
RGB = "rgb"
# The global vector `(B, D)`, when the model has a global head.
GLOBAL = "global"
# Every GLOM level `(B, num_levels, h, w, D)`, when `num_levels > 1`.
LEVELS = "levels"

OUTPUTS = (FEATURES, RGB, GLOBAL, LEVELS)
