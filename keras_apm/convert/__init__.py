"""Converters from other formats into keras_apm presets."""

from keras_apm.convert.official import OFFICIAL_VARIANTS
from keras_apm.convert.official import build_official_model
from keras_apm.convert.official import check_official_state_dict
from keras_apm.convert.official import convert_official_checkpoint
from keras_apm.convert.official import load_official_state_dict
from keras_apm.convert.official import set_official_weights
