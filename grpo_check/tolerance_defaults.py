"""torch.testing.assert_close's default (rtol, atol) per floating dtype, by dtype name.

The one table every layer derives its dtype tolerances from (compare's tolerance policy, the invariants, the
testing assertions). Standard library only, so the CLI can import it without torch.
"""

from __future__ import annotations

DTYPE_DEFAULTS: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-7),
    "float32": (1.3e-6, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float16": (1e-3, 1e-5),
}

# dtypes whose rounding is coarse enough that a tensor is held to a same-precision reference's error
LOW_PRECISION: tuple[str, ...] = ("bfloat16", "float16")
