"""How much `fit` prints: a live bar on a terminal, a line per epoch in logs.

Keras' `verbose="auto"` always means the live progress bar; when the output
is not a terminal (a log file, CI, a pipe) that bar cannot redraw itself
and becomes one line per step: thousands of lines for one run. keras_apm's
`"auto"` keeps the bar on a terminal and asks Keras for one line per epoch
(`verbose=2`) everywhere else.
"""

import sys


def fit_verbosity(verbose="auto", stream=None):
    """`verbose` for `keras.Model.fit`: `"auto"` resolved as above.

    Args:
        verbose: `"auto"`, 0, 1 or 2 (anything but `"auto"` is returned).
        stream: the stream Keras prints to (default `sys.stdout`).

    Example:
    >>> model.fit(data, epochs=10, verbose=fit_verbosity("auto"))
    """
    if verbose != "auto":
        return verbose
    stream = sys.stdout if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return 1 if isatty is not None and isatty() else 2
