"""APM inference under `mixed_bfloat16` against float32 on one backend (issue 27).

A short probe, not a benchmark: an APM of 224 px (patch 14, trunk
2048-2048-1024, 512-d features, no RGB head), both dtypes built in one process,
best of 5 calls taken in turn (so load from other jobs hits both alike):

    KERAS_BACKEND=jax python benchmarks/bf16_probe.py --patch

With `--patch` on JAX it adds a third model whose bf16 products accumulate
in float32 (`preferred_element_type`): see docs/speed.md for why.
"""
import os, sys, time
import numpy as np
import keras
import keras_apm
backend = keras.backend.backend()
cfg = dict(image_shape=(224, 224, 3), patch_size=14, trunk_widths=(2048, 2048, 1024),
           feature_dim=512, rgb_head=False)
x = np.random.default_rng(0).random((1, 224, 224, 3)).astype("float32")
def step_for(model):
    if backend == "jax":
        import jax
        tv = [v.value for v in model.trainable_variables]; nv = [v.value for v in model.non_trainable_variables]
        f = jax.jit(lambda tv, nv, x: model.stateless_call(tv, nv, x)[0])
        return lambda: jax.block_until_ready(f(tv, nv, x))
    if backend == "tensorflow":
        import tensorflow as tf
        f = tf.function(lambda x: model(x, training=False))
        xt = tf.constant(x)
        return lambda: [v.numpy() for v in f(xt).values()]
    import torch
    xt = torch.from_numpy(x)
    def s():
        with torch.inference_mode():
            return model(xt)
    return s
steps = {}
for dt in ("float32", "mixed_bfloat16"):
    keras.utils.set_random_seed(0)
    steps[dt] = step_for(keras_apm.APM(**cfg, dtype=dt))
if backend == "jax" and "--patch" in sys.argv:
    import jax.numpy as jnp
    from keras.src.backend.jax import numpy as knp
    orig = knp.matmul
    def matmul(a, b):
        a, b = jnp.asarray(a), jnp.asarray(b)
        if a.dtype == jnp.bfloat16 and b.dtype == jnp.bfloat16:
            return jnp.matmul(a, b, preferred_element_type=jnp.float32).astype(jnp.bfloat16)
        return orig(a, b)
    knp.matmul = matmul
    keras.utils.set_random_seed(0)
    steps["bf16_f32acc"] = step_for(keras_apm.APM(**cfg, dtype="mixed_bfloat16"))
for s in steps.values():
    s(); s()
best = {k: 1e9 for k in steps}
for _ in range(5):
    for k, s in steps.items():
        t = time.perf_counter(); s(); best[k] = min(best[k], time.perf_counter() - t)
print(backend, os.environ.get("XLA_FLAGS", ""), {k: round(v, 4) for k, v in best.items()},
      {k: round(best["float32"] / v, 2) for k, v in best.items()})
