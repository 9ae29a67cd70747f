"""Converts an official APM PyTorch checkpoint into a keras_apm preset.

Usage:
    python tools/convert_official_checkpoint.py --checkpoint model_15.pth \
        --variant coco --output ./apm_coco_dinov2_l14_reg_448

Same as `keras-apm convert ...`.
"""

import sys

from keras_apm.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert"] + sys.argv[1:]))
