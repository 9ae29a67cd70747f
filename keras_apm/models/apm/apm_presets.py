"""Built-in APM presets.

`kaggle_handle` is where keras-hub's machinery finds a preset: a Kaggle or
Hugging Face handle, or, for presets shipped inside this package, their local
directory.

Only presets that load offline are listed: the official checkpoints are not
published as Keras presets, so the COCO and TTT APMs are made locally from
the official `.pth` files with `keras-apm convert` (README, "Official
checkpoints") and loaded from that directory.
"""

import os

PRESETS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "presets"
)

backbone_presets = {
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
