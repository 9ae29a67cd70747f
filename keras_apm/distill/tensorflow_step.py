"""TensorFlow: the training and evaluation steps of `APMDistiller`.

Written as in the Keras guide "Customizing what happens in `fit()` with
TensorFlow": a `tf.GradientTape` around the forward pass, then
`optimizer.apply`. Keras wraps the step in a `tf.function` and, under a
`tf.distribute` strategy, runs it on every replica. Only imported when the
Keras backend is TensorFlow.
"""

import keras
import tensorflow as tf

from keras_apm.distill import distribution


def _batch_size(results):
    return tf.shape(results["outputs"]["features"])[0]


def train_step(distiller, data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        results = distiller(x, training=True)
        total, terms = distiller.compute_losses(results)
        # Under a tf.distribute strategy each replica sees 1/N of the global
        # batch and the replicas' gradients are summed: scale by 1/N so the
        # update is the gradient of the global batch's mean loss.
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        loss = distiller.optimizer.scale_loss(total / replicas)
    weights = distiller.trainable_weights
    grads = tape.gradient(loss, weights)
    distiller.optimizer.apply(grads, weights)
    logs = distiller.update_trackers(total, terms, _batch_size(results))
    return distribution.step_logs(logs)


def test_step(distiller, data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    results = distiller(x, training=False)
    total, terms = distiller.compute_losses(results)
    logs = distiller.update_trackers(total, terms, _batch_size(results))
    return distribution.step_logs(logs)
