"""JAX: the stateless training and evaluation steps of `APMDistiller`.

Written as in the Keras guide "Customizing what happens in `fit()` with
JAX": the step takes and returns the model state explicitly, differentiates
`stateless_call` with `jax.value_and_grad`, and applies the optimizer with
`stateless_apply`. Keras jits the step (and, under a
`keras.distribution.DataParallel`, shards the batch across devices).
Only imported when the Keras backend is JAX.
"""

import jax
import keras


def _loss_and_updates(
    distiller, trainable, non_trainable, optimizer_variables, x, training
):
    results, non_trainable = distiller.stateless_call(
        trainable, non_trainable, x, training=training
    )
    total, terms = distiller.compute_losses(results)
    loss = total
    if training:
        # Loss scaling (a no-op except under a LossScaleOptimizer) reads the
        # optimizer's scale variable: give it the state's value.
        mapping = list(zip(distiller.optimizer.variables, optimizer_variables))
        with keras.StatelessScope(state_mapping=mapping):
            loss = distiller.optimizer.scale_loss(loss)
    return loss, (total, terms, non_trainable)


def _batch_size(x):
    images = x["images"] if isinstance(x, dict) else x
    return images.shape[0]


def _update_metrics(distiller, metrics_variables, total, terms, batch_size):
    values = distiller.metric_values(total, terms)
    logs, new_variables, start = {}, [], 0
    for metric in distiller.metrics:
        end = start + len(metric.variables)
        variables = metric.stateless_update_state(
            metrics_variables[start:end],
            values[metric.name],
            sample_weight=batch_size,
        )
        logs[metric.name] = metric.stateless_result(variables)
        new_variables += list(variables)
        start = end
    return logs, new_variables


def train_step(distiller, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)

    def loss_fn(trainable, non_trainable):
        return _loss_and_updates(
            distiller, trainable, non_trainable, optimizer_variables, x, True
        )

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, aux), grads = grad_fn(trainable, non_trainable)
    total, terms, non_trainable = aux
    trainable, optimizer_variables = distiller.optimizer.stateless_apply(
        optimizer_variables, grads, trainable
    )
    logs, metrics_variables = _update_metrics(
        distiller, metrics_variables, total, terms, _batch_size(x)
    )
    state = (trainable, non_trainable, optimizer_variables, metrics_variables)
    return logs, state


def test_step(distiller, state, data):
    trainable, non_trainable, metrics_variables = state
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    _, aux = _loss_and_updates(
        distiller, trainable, non_trainable, (), x, False
    )
    total, terms, non_trainable = aux
    logs, metrics_variables = _update_metrics(
        distiller, metrics_variables, total, terms, _batch_size(x)
    )
    return logs, (trainable, non_trainable, metrics_variables)
