"""Converters from other formats into keras_apm presets."""

from keras_apm.utils.lazy import lazy_exports

_EXPORTS = {
    "OFFICIAL_VARIANTS": "official",
    "build_official_model": "official",
    "check_official_state_dict": "official",
    "convert_official_checkpoint": "official",
    "load_official_state_dict": "official",
    "set_official_weights": "official",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
