"""Built-in teacher presets shipped inside keras_apm.

Registered on keras-hub's `ViTBackbone` with keras-hub's own
`register_presets` (as `keras_apm.models.apm` does for APM presets), so the
name resolves offline to the shipped directory in every keras-hub loader:
`Teacher.from_preset("vit_tiny_digits")`,
`keras_hub.models.ViTImageClassifier.from_preset("vit_tiny_digits")`,
`keras_hub.models.Backbone.from_preset("vit_tiny_digits")`.
"""

import os

PRESETS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "presets"
)

vit_presets = {
    "vit_tiny_digits": {
        "metadata": {
            "description": (
                "Tiny ViT digit classifier (keras-hub ViTImageClassifier) "
                "trained from scratch on sklearn_digits by "
                "tools/train_digits_teacher.py: 32x32 RGB input in [0, 255], "
                "patch 4 (8x8 grid + class token), 4 layers, 64 wide. "
                "Ships with keras_apm; see its training.json for accuracy."
            ),
            "path": "vit",
        },
        "kaggle_handle": os.path.join(PRESETS_DIR, "vit_tiny_digits"),
    },
}
