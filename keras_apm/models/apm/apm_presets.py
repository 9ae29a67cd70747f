"""Built-in APM presets.

`kaggle_handle` is where keras-hub's machinery finds a preset: a Kaggle or
Hugging Face handle, or, for presets shipped inside this package, their local
directory.
"""

import os

PRESETS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "presets"
)

backbone_presets = {
    "apm_coco_dinov2_l14_reg_448": {
        "metadata": {
            "description": (
                "Official COCO APM (model_15.pth) converted to Keras: 448x448 "
                "BGR min-max input, 32x32 grid, trunk 4096-4096-4096-2048-1024, "
                "1024-d features distilled from DINOv2 ViT-L/14 with registers, "
                "RGB head. 54.3M parameters."
            ),
            "params": 54347600,
            "path": "apm",
        },
        "kaggle_handle": "kaggle://keras-apm/apm/keras/apm_coco_dinov2_l14_reg_448",
    },
    "apm_tiny_digits": {
        "metadata": {
            "description": (
                "Tiny APM distilled from `vit_tiny_digits` on sklearn_digits "
                "(32x32 RGB, patch 4, 8x8 grid). Ships with keras_apm."
            ),
            "path": "apm",
        },
        "kaggle_handle": os.path.join(PRESETS_DIR, "apm_tiny_digits"),
    },
}
