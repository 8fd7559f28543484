"""The one tolerance table: how far a sparse result may sit from the fp64 reference, per dtype.

Every comparison against the reference kernel (the test suite, the benchmarks' correctness check
before timing, the demo's round-trip check) takes its tolerance from here, so that "correct"
means the same thing everywhere. The reference accumulates in fp64 from the very same rounded
inputs, so only the accumulation order and the output rounding differ; the bounds follow the
unit roundoff of each format with room for a few thousand accumulated terms.

`rtol`/`atol` are torch.testing.assert_close's arguments. The benchmarks check one normwise
number instead, max |y - ref| / max |ref|, against `rtol` (see `relative_error_bound`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Tolerance", "TOLERANCES", "PRECISION_NAMES", "tolerance", "relative_error_bound"]


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def as_kwargs(self) -> dict[str, float]:
        """{"rtol": ..., "atol": ...} for torch.testing.assert_close / np.testing.assert_allclose"""
        return {"rtol": self.rtol, "atol": self.atol}


# Keyed by compute precision. "tf32" is fp32 storage computed on TF32 tensor cores (10-bit
# mantissa), the only precision that is not a storage dtype.
TOLERANCES: dict[str, Tolerance] = {
    "fp64": Tolerance(rtol=1e-10, atol=1e-10),
    "fp32": Tolerance(rtol=1e-4, atol=1e-4),
    "tf32": Tolerance(rtol=1e-2, atol=1e-2),
    "fp16": Tolerance(rtol=2e-2, atol=2e-2),
    "bf16": Tolerance(rtol=5e-2, atol=5e-2),
}

PRECISION_NAMES: dict[torch.dtype, str] = {
    torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
}


def tolerance(precision: torch.dtype | str) -> Tolerance:
    """The tolerance of a torch floating dtype or a precision name ("fp32", "tf32", ...)."""
    name = PRECISION_NAMES.get(precision, precision) if isinstance(precision, torch.dtype) \
        else precision
    try:
        return TOLERANCES[name]
    except KeyError:
        raise KeyError(f"no tolerance for {precision!r}; known: {', '.join(TOLERANCES)} "
                       f"and the dtypes {', '.join(map(str, PRECISION_NAMES))}") from None


def relative_error_bound(precision: torch.dtype | str, depth: int = 1) -> float:
    """Largest accepted max |y - ref| / max |ref| for a result `depth` sparse layers (or
    forward+backward passes) deep: the errors of chained layers add up, hence depth x rtol."""
    return depth * tolerance(precision).rtol
