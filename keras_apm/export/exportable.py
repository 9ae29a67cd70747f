"""What an export of a preset holds: a classifier, head and all, or an APM."""

import os


def load_exportable(preset):
    """The model an export of `preset` holds: an `APMImageClassifier` (head
    and all) when the preset was saved from one, else its `APM`.

    An export of a classifier must carry its logits: exporting only the
    backbone of a classifier preset would silently drop the head.
    """
    from keras_apm.utils import preset_files
    from keras_apm.models.apm.apm_backbone import APM
    from keras_apm.models.apm.apm_image_classifier import APMImageClassifier
    from keras_apm.utils.preset_files import TASK_CONFIG_FILE
    from keras_apm.utils import keras_hub_compat

    preset = os.fspath(preset)
    if os.path.isdir(preset):
        # Checksums and JSON first, so a bad task.json is named.
        preset_files.check_preset_files(preset)
    if keras_hub_compat.check_file_exists(preset, TASK_CONFIG_FILE):
        config = keras_hub_compat.load_json(preset, TASK_CONFIG_FILE)
        try:
            task_cls = keras_hub_compat.check_config_class(config)
        except (ValueError, TypeError, KeyError):
            task_cls = None
        if isinstance(task_cls, type) and issubclass(task_cls, APMImageClassifier):
            return APMImageClassifier.from_preset(preset)
    return APM.from_preset(preset)
