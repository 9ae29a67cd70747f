"""Checks of hyper-parameters: finite numbers in range, before any work.

The API functions check their arguments under their Python names
(`` `learning_rate` ``); the command line checks its flags first, under the
flag names (`--learning-rate`), so each error speaks the caller's words.
"""

import math
import numbers


def _describe(integer, low, high, low_open):
    kind = "an int" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{kind} in [{low}, {high}]"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{kind} <= {high}"
    return kind


def check_number(
    value, name, low=None, high=None, low_open=False, integer=False,
    allow_none=False,
):
    """Returns `value` if it is a finite number in range; else raises.

    Args:
        value: the value to check.
        name: how the caller calls it (`` "`learning_rate`" `` or
            `"--learning-rate"`).
        low, high: the inclusive bounds (None: unbounded).
        low_open: `low` itself is excluded (`> low`).
        integer: an int is required (bools are refused).
        allow_none: None passes (an optional setting left unset).

    Raises:
        ValueError: "NAME must be a finite number > 0, got nan".

    Example:
    >>> check_number(1e-3, "`learning_rate`", low=0, low_open=True)
    0.001
    >>> check_number(float("nan"), "--learning-rate", low=0, low_open=True)
    ValueError: --learning-rate must be a finite number > 0, got nan.
    """
    if value is None and allow_none:
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and integer:
        ok = isinstance(value, numbers.Integral)
    if ok:
        ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ValueError(
            f"{name} must be {_describe(integer, low, high, low_open)}, "
            f"got {value!r}."
        )
    return value


def check_flags(args, **ranges):
    """Checks command-line flags (set ones only) with `check_number`.

    Args:
        args: the `argparse.Namespace`.
        **ranges: `dest=dict(...)` keyword arguments of `check_number`.

    Example:
    >>> check_flags(args, epochs=dict(low=1, integer=True),
    ...             learning_rate=dict(low=0, low_open=True))
    """
    for dest, kwargs in ranges.items():
        value = getattr(args, dest, None)
        if value is not None:
            check_number(value, "--" + dest.replace("_", "-"), **kwargs)
