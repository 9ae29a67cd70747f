"""PyTorch: the training and evaluation steps of `APMDistiller`.

Written as in the Keras guide "Customizing what happens in `fit()` with
PyTorch": clear the gradients, run the forward pass, `loss.backward()`, then
`optimizer.apply` under `torch.no_grad()`. The frozen teacher's weights do
not require gradients, so autograd records only the student. Only imported
when the Keras backend is PyTorch.
"""

import keras
import torch


def _batch_size(results):
    return results["outputs"]["features"].shape[0]


def train_step(distiller, data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    distiller.zero_grad()
    results = distiller(x, training=True)
    total, terms = distiller.compute_losses(results)
    distiller.optimizer.scale_loss(total).backward()
    weights = distiller.trainable_weights
    grads = [w.value.grad for w in weights]
    with torch.no_grad():
        distiller.optimizer.apply(grads, weights)
    terms = {k: v.detach() for k, v in terms.items()}
    return distiller.update_trackers(
        total.detach(), terms, _batch_size(results)
    )


def test_step(distiller, data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    with torch.no_grad():
        results = distiller(x, training=False)
        total, terms = distiller.compute_losses(results)
        return distiller.update_trackers(total, terms, _batch_size(results))
