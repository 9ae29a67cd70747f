"""Size checks made before memory is taken.

A config or a call whose tensors cannot fit would otherwise allocate for
minutes (or be killed by the system) before failing. The rule: estimate the
bytes the largest tensors would need and refuse, with that size, when they
exceed the memory available to this process (`MemAvailable` on Linux, else
the physical memory; `KERAS_APM_MEMORY_LIMIT` bytes when set, e.g. to model
a smaller device). The estimates are lower bounds: passing the check does
not promise that the work fits, failing it proves it cannot.

Example:
>>> check_fits(4 * 10**12, "APM(image_shape=...)", "Use a smaller image.")
ValueError: APM(image_shape=...) would need at least 3.6 TiB ...
"""

import os

LIMIT_VARIABLE = "KERAS_APM_MEMORY_LIMIT"


def available_bytes():
    """Bytes of memory this process may still take (see the module doc)."""
    limit = os.environ.get(LIMIT_VARIABLE)
    if limit:
        try:
            return int(float(limit))
        except ValueError:
            raise ValueError(
                f"{LIMIT_VARIABLE} must be a number of bytes. Received "
                f"{limit!r}."
            ) from None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None  # unknown: nothing is refused.


def format_bytes(count):
    """`count` bytes in binary units, e.g. `"3.6 TiB"`."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} EiB"


def check_fits(nbytes, what, fix):
    """Raises a ValueError if `nbytes` exceed the available memory.

    Args:
        nbytes: int, the estimated bytes the work would need.
        what: what needs them, in the caller's words.
        fix: how to ask for less.
    """
    available = available_bytes()
    if available is not None and nbytes > available:
        raise ValueError(
            f"{what} would need at least {format_bytes(nbytes)} of memory "
            f"({nbytes} bytes), more than the {format_bytes(available)} "
            f"available (checked before allocating anything). {fix}"
        )
