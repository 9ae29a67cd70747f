"""Converters from other formats into keras_apm presets."""

from keras_apm.utils.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    """
    official: OFFICIAL_VARIANTS build_official_model check_official_state_dict convert_official_checkpoint load_official_state_dict set_official_weights
""",
)
