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

__all__ = ["Tolerance", "TOLERANCES", "PRECISION_NAMES", "TRAINING_TOLERANCES", "tolerance",
           "relative_error_bound"]


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


# The fused sparse trainer (lth_sparse.sparse.trainer) against torch training the same weights
# (fp32; only summation orders differ). one_step: parameters, gradients and Adam moments after
# one step. Adam divides by sqrt(v), so a gradient that is tiny next to its summands' rounding
# error moves a weight by up to ~1e-3 of lr (1.2e-3): 2e-5. many_steps: pointwise after 100
# steps (LeNet at 10.7%, batch 60, a learnable task): measured ~1e-6, so 1e-4. Beyond that the
# two trajectories are chaotic twins: a unit whose pre-activation sits within rounding of zero,
# or a gradient at the scale of eps, gets an lr-sized Adam step in one and not in the other,
# and the difference grows (over 500 steps, by seed: anywhere from 1e-7 to 0.066 pointwise,
# first loss difference > 1e-4 after 184-450 steps). So 500 steps are compared as trajectories:
# long_run_weights = normwise ||w - w_ref|| / ||w_ref|| (rtol; measured <= 0.035) and
# long_run_mean_loss = mean loss over the last 50 steps (atol; measured <= 3e-4).
# loss: per-step mean cross-entropy within the pointwise window. eval_loss_sum: the summed
# cross-entropy over an evaluation set. imp_accuracy: one IMP round trained dense
# vs sparse from the same seed (atol in accuracy as a fraction: 0.1 points; early-stop
# iteration equal). one_step_update: normwise ||dw - dw_ref|| / ||dw_ref|| of one step's update
# per layer (rtol), for whole networks where a handful of the 235K weights have eps-sized
# gradients (dense LeNet on random data, batch 60: 5 weights off by up to 2.5e-5, normwise 5e-5).
TRAINING_TOLERANCES: dict[str, Tolerance] = {
    "one_step": Tolerance(rtol=1e-4, atol=2e-5),
    "many_steps": Tolerance(rtol=0.0, atol=1e-4),
    "long_run_weights": Tolerance(rtol=0.1, atol=0.0),
    "long_run_mean_loss": Tolerance(rtol=0.0, atol=1e-2),
    "loss": Tolerance(rtol=1e-4, atol=1e-4),
    "eval_loss_sum": Tolerance(rtol=1e-5, atol=1e-3),
    "imp_accuracy": Tolerance(rtol=0.0, atol=1e-3),
    "one_step_update": Tolerance(rtol=1e-3, atol=0.0),
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
