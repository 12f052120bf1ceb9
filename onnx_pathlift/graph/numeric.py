"""Numbers reported as their log10: the plain value where float64 holds it, and the JSON form.

Path-norms and bounds overflow float64 easily (a deep network's ‖Φ‖ reaches 10**400), so they are
computed and kept as log10; reports give both the log10 and, where it fits, the value.
"""

from __future__ import annotations

import math

#: the largest log10 turned into a plain value: ``10**308.25 ≈ 1.78e308`` stays below float64's
#: maximum (``≈ 10**308.2547``) with room for the rounding of the power
LOG10_VALUE_MAX = 308.25


def log10_value(log10: float) -> float | None:
    """``10**log10``: 0 for ``-inf``, None for NaN and past :data:`LOG10_VALUE_MAX` (float64's range)."""
    if log10 == -math.inf:
        return 0.0
    return 10.0**log10 if log10 < LOG10_VALUE_MAX else None


def json_float(x: float | None) -> float | None:
    """``x`` for JSON: None for None, NaN and ±inf (JSON has no such numbers)."""
    return x if x is not None and math.isfinite(x) else None
