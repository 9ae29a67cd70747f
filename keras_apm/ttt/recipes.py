"""Named test-time-training recipes and the optimizers they build."""

# Keras is imported inside the functions: the `keras-apm ttt` parser reads
# RECIPES and LOSSES from here without paying for Keras.

# The global-vector losses of test-time training.
LOSSES = ("mse", "cosine")

# Optimizers whose update of a weight depends on that weight's gradient and
# state only (names in `keras.optimizers`). Batched TTT stacks B images'
# weights into one variable, so only these keep the images independent
# (LAMB/LARS/Muon use whole-variable norms, Adafactor factors moments over
# the last two axes).
ELEMENTWISE_OPTIMIZERS = (
    "SGD", "Adam", "AdamW", "Adamax", "Nadam", "RMSprop", "Adagrad",
    "Adadelta", "Lion",
)


def _elementwise_classes():
    import keras

    return tuple(getattr(keras.optimizers, n) for n in ELEMENTWISE_OPTIMIZERS)


def official_learning_rate():
    """The official schedule: 1e-4, x0.1 every 200 steps (torch `StepLR`)."""
    import keras

    return keras.optimizers.schedules.ExponentialDecay(
        1e-4, decay_steps=200, decay_rate=0.1, staircase=True
    )


# Each recipe fills the `TestTimeTrainer` arguments left as None.
RECIPES = {
    # Measured on the sklearn_digits test split with vit_tiny_digits as the
    # teacher (docs/ttt.md, "Choosing the defaults"): Adam 3e-3 has the
    # lowest loss at every budget from 5 steps on; 5 steps already agree with the
    # teacher on all 360 images, 10 leave a margin (loss 0.055 vs 0.195).
    "default": {
        "steps": 10,
        "optimizer": "adam",
        "learning_rate": 3e-3,
        "loss": "mse",
        "init": "keras",
        "locations_per_step": None,
    },
    # The official release: Adam 1e-4 with x0.1 every 200 steps, MSE, every
    # weight (biases too) re-drawn from N(0, 0.01). 20 steps is the count of
    # the official timing in APM_SPEC.md.
    "official": {
        "steps": 20,
        "optimizer": "adam",
        "learning_rate": official_learning_rate,
        "loss": "mse",
        "init": "normal",
        "locations_per_step": None,
    },
}


def recipe_settings(recipe):
    """The settings of a named recipe (a fresh copy)."""
    recipe = "default" if recipe is None else recipe
    if recipe not in RECIPES:
        raise ValueError(
            f"`recipe` must be None or one of {sorted(RECIPES)}. Received {recipe!r}."
        )
    settings = dict(RECIPES[recipe])
    if callable(settings["learning_rate"]):
        settings["learning_rate"] = settings["learning_rate"]()
    return settings


def make_optimizer(optimizer, learning_rate=None):
    """A Keras optimizer usable for (batched) test-time training.

    Args:
        optimizer: a name that `keras.optimizers.get` knows (`"adam"`,
            `"sgd"`, ...) or an optimizer instance (used as a template:
            `fresh_optimizer` copies it for every batch of images).
        learning_rate: float or schedule; `None` keeps the optimizer's own.

    Example:
    >>> make_optimizer("adam", 1e-3).learning_rate
    """
    import keras

    if isinstance(optimizer, str):
        config = {} if learning_rate is None else {"learning_rate": learning_rate}
        try:
            optimizer = keras.optimizers.get(
                {"class_name": optimizer, "config": config}
            )
        except ValueError:
            raise ValueError(
                f"Unknown optimizer {optimizer!r}. Expected one of "
                f"{[n.lower() for n in ELEMENTWISE_OPTIMIZERS]} or a "
                "Keras optimizer instance."
            ) from None
    elif isinstance(optimizer, keras.optimizers.Optimizer):
        if learning_rate is not None:
            optimizer = fresh_optimizer(optimizer, learning_rate)
    else:
        raise ValueError(
            "`optimizer` must be an optimizer name or a Keras optimizer. "
            f"Received {type(optimizer).__name__}."
        )
    check_elementwise(optimizer)
    return optimizer


def check_elementwise(optimizer):
    """Raises unless `optimizer` updates every weight on its own."""
    if not isinstance(optimizer, _elementwise_classes()):
        raise ValueError(
            "Test-time training needs an element-wise optimizer, one of "
            f"{list(ELEMENTWISE_OPTIMIZERS)}. Received "
            f"{type(optimizer).__name__}."
        )
    config = optimizer.get_config()
    for key in ("clipnorm", "global_clipnorm", "gradient_accumulation_steps"):
        if config.get(key) is not None:
            raise ValueError(
                f"Test-time training does not support the optimizer option "
                f"{key}={config[key]!r}: norms and accumulation would mix "
                "the gradients of images adapted together."
            )


def fresh_optimizer(optimizer, learning_rate=None):
    """An unbuilt copy of `optimizer` (new moments, new schedule)."""
    config = optimizer.get_config()
    if learning_rate is not None:
        config["learning_rate"] = learning_rate
    return type(optimizer).from_config(config)
