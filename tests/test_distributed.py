"""Data-parallel distillation: JAX `DataParallel` and TF `MirroredStrategy`.

Each test runs a fresh Python process (the virtual devices must be set up
before the backend starts), distils the same student from the same teacher
on one device and data-parallel on several virtual CPU devices, and checks
that both train and end with the same weights. Each runs once: the JAX test
in the JAX suite, the TensorFlow test in the TensorFlow suite.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import xla_flags

# Data-parallel and single-device runs differ only in float rounding (the
# gradient of the global batch is summed in another order). Measured after
# 12 SGD steps: largest weight difference 9e-8 on both (2 cores, CPU).
WEIGHT_ATOL = 1e-4
LOSS_RTOL = 1e-4

COMMON = """
import json, sys
import numpy as np
import keras
from sklearn.datasets import load_digits
import keras_apm
from keras_apm.distill import APMDistiller
from keras_apm.teachers import Teacher

preset = sys.argv[1]
data = load_digits()
images = np.kron(data.images[:64], np.ones((4, 4)))
images = (np.repeat(images[..., None], 3, -1) * (255 / 16)).astype("float32")
labels = data.target[:64].astype("int32")


def make_dataset():
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)


def build(initial=None):
    keras.utils.set_random_seed(0)
    teacher = Teacher.from_preset(preset)
    student = keras_apm.APM(
        image_shape=(32, 32, 3), patch_size=8, trunk_widths=(64, 32),
        feature_dim=16, rgb_widths=(16,), global_head=True,
        global_num_heads=2,
    )
    if initial is not None:
        student.set_weights(initial)
    distiller = APMDistiller(student, teacher)
    # Plain SGD: its step is proportional to the gradient, so a gradient
    # summed over replicas without rescaling would show (Adam would hide it).
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return distiller


def train(distiller):
    history = distiller.fit(make_dataset(), epochs=3, verbose=0).history
    return history, distiller.student.get_weights()


def report(single, parallel, **extra):
    diff = max(
        float(np.max(np.abs(a - b))) for a, b in zip(single[1], parallel[1])
    )
    print(json.dumps(dict(
        single=single[0], parallel=parallel[0], max_weight_diff=diff, **extra,
    )))
"""

JAX_SCRIPT = COMMON + """
import jax

devices = jax.devices()
assert len(devices) == 4, devices
single = build()
initial = single.student.get_weights()
single = train(single)

distribution = keras.distribution.DataParallel(devices=devices)
keras.distribution.set_distribution(distribution)
distiller = build(initial)
kernel = distiller.student.trainable_variables[0].value
parallel = train(distiller)
# An epoch whose last batch does not split over the 4 devices (61 = 3 x 16
# + 13): that batch is dropped, as the multi-process path drops it.
import tensorflow as tf
uneven = tf.data.Dataset.from_tensor_slices((images[:61], labels[:61])).batch(16)
logs = distiller.fit(uneven, epochs=1, verbose=0).history
seen = distiller.evaluate(uneven, verbose=0, return_dict=True)
report(
    single, parallel,
    kernel_devices=len(kernel.sharding.device_set),
    replicated=bool(kernel.sharding.is_fully_replicated),
    uneven_loss=logs["loss"][0], uneven_eval_loss=seen["loss"],
)
"""

TF_SCRIPT = """
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)
""" + COMMON + """
single = build()
initial = single.student.get_weights()
single = train(single)

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    distiller = build(initial)
parallel = train(distiller)
report(
    single, parallel,
    replicas=strategy.num_replicas_in_sync,
    mirrored=type(distiller.student.trainable_variables[0].value).__name__,
)
"""



def run_script(script, preset, backend, **env):
    environment = dict(os.environ, KERAS_BACKEND=backend, **env)
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), preset],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_same_training(out):
    print("max weight difference:", out["max_weight_diff"])
    single, parallel = out["single"], out["parallel"]
    assert sorted(single) == sorted(parallel)
    for key in single:
        np.testing.assert_allclose(
            parallel[key], single[key], rtol=LOSS_RTOL, err_msg=key
        )
    # Distillation makes progress in the data-parallel run.
    for key in ("loss", "grid_loss", "rgb_loss", "global_loss"):
        assert parallel[key][-1] < parallel[key][0], (key, parallel[key])
    assert out["max_weight_diff"] < WEIGHT_ATOL, out["max_weight_diff"]


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="runs once, in the JAX suite"
)
def test_jax_data_parallel(vit_teacher_preset):
    out = run_script(
        JAX_SCRIPT,
        vit_teacher_preset,
        "jax",
        XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"),
    )
    assert out["kernel_devices"] == 4 and out["replicated"]
    check_same_training(out)
    assert np.isfinite([out["uneven_loss"], out["uneven_eval_loss"]]).all()


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs once, in the TensorFlow suite",
)
def test_tensorflow_mirrored_strategy(vit_teacher_preset):
    out = run_script(TF_SCRIPT, vit_teacher_preset, "tensorflow")
    assert out["replicas"] == 2
    assert out["mirrored"] == "MirroredVariable"
    check_same_training(out)
