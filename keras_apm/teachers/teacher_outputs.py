"""The names of a `Teacher`'s outputs, for every module that reads them.

`teacher(images)` returns a dict with these keys (see
`keras_apm.teachers.Teacher`); the head table
(`keras_apm.models.apm.apm_outputs.heads()`) names the ones a student learns
from, the feature cache stores them and test-time training classifies with
them.

Example:
>>> from keras_apm.teachers import teacher_outputs
>>> teacher(images)[teacher_outputs.GRID].shape  # (B, h, w, D)
"""

# The final patch tokens on the patch grid `(B, h, w, D)`.
GRID = "grid"
# The global image embedding `(B, Dg)`.
GLOBAL = "global"
# The chosen blocks' patch grids `(B, L, h, w, D)` (with `layers=`).
LEVELS = "levels"
# The vector the classifier head reads `(B, Dh)` (classifier teachers).
HEAD_INPUT = "head_input"
# The classifier head's logits `(B, num_classes)` (classifier teachers).
LOGITS = "logits"
