"""The two grids: one sparse layer (spmm) per shape x sparsity x batch x dtype x provider, and
one training step (forward + backward + Adam) of an MLP per model x sparsity x batch."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from lth_sparse.bench.checks import check_sparse_mlp, rel_error
from lth_sparse.bench.config import COLD_CACHE_BYTES, DTYPE_NAMES, DTYPES, BenchConfig, model_label
from lth_sparse.bench.problems import Problem
from lth_sparse.bench.providers import Provider
from lth_sparse.bench.rows import make_row
from lth_sparse.bench.timing import sync, time_fn
from lth_sparse.bridge.convert import sparse_mlp_from_mlp
from lth_sparse.errors import BackendUnavailableError, LthSparseError
from lth_sparse.lottery.models import MLP
from lth_sparse.sparse.tolerances import relative_error_bound

# the training check goes three layers deep and through the backward pass
TRAIN_CHECK_DEPTH = 10


def error_reason(exc: BaseException) -> str:
    """'ExcType: message', cut to fit a table cell."""
    return f"{type(exc).__name__}: {exc}"[:300]


def timed(cfg: BenchConfig, fn, *, cold: bool = False, graph: bool = False) -> dict:
    """time_fn with the run's budget and repeats."""
    return time_fn(fn, cfg.device, budget_s=cfg.budget_s, repeats=cfg.repeats, cold=cold,
                   graph=graph)


# ---------------------------------------------------------------------------- spmm grid

def times_cold(cfg: BenchConfig, problem: Problem, dtype: torch.dtype) -> bool:
    """Whether this problem is timed with the caches evicted before every call (see --cache)."""
    if cfg.device != "cpu" or cfg.cache == "hot":
        return False
    if cfg.cache == "cold":
        return True
    elem = torch.tensor([], dtype=dtype).element_size()
    return problem.in_features * problem.out_features * elem > COLD_CACHE_BYTES


def run_spmm_grid(cfg: BenchConfig, providers: Sequence[Provider], progress=None) -> list[dict]:
    """One row per (shape, sparsity, batch, dtype, provider); FAILED providers are not timed."""
    rows = []
    for dtype_name in cfg.dtypes:
        dtype = DTYPES[dtype_name]
        for shape in cfg.shapes:
            for sparsity in cfg.sparsities:
                problem = Problem(shape[0], shape[1], sparsity, cfg.device, cfg.seed)
                cold = times_cold(cfg, problem, dtype)
                for batch in cfg.batches:
                    x = problem.x(batch, dtype)
                    ref = problem.reference(x)
                    for prov in providers:
                        base = dict(kind="spmm", shape=problem.shape,
                                    in_features=problem.in_features,
                                    out_features=problem.out_features, sparsity=sparsity,
                                    density=round(problem.density, 6), nnz=problem.nnz,
                                    batch=batch, dtype=dtype_name, device=cfg.device,
                                    provider=prov.name, cache="cold" if cold else "hot")
                        rows.append(measure_provider(cfg, prov, problem, x, ref, dtype_name,
                                                     cold, base))
                        if progress is not None:
                            progress.update(1)
                    del x, ref
                problem.release()
    return rows


def measure_provider(cfg: BenchConfig, prov: Provider, problem: Problem, x: torch.Tensor,
                     ref: torch.Tensor, dtype_name: str, cold: bool, base: dict) -> dict:
    """Check one provider against the reference on one cell, then time it if it is right."""
    ok, reason = prov.supports(cfg.device, dtype_name)
    if not ok:
        return make_row(**base, status="SKIPPED", reason=reason)
    try:
        fn = prov.build(problem, x)
        y = fn()
        sync(cfg.device)
    except (NotImplementedError, BackendUnavailableError, torch.cuda.OutOfMemoryError) as exc:
        # cannot run this cell here (unsupported dtype/form, backend not built, too big)
        return make_row(**base, status="SKIPPED", reason=error_reason(exc))
    except Exception as exc:  # a provider that crashes is as wrong as one that miscomputes
        return make_row(**base, status="FAILED", reason="raised " + error_reason(exc))
    variant = getattr(fn, "variant", None)
    err = rel_error(y, ref)
    precision = prov.precision(dtype_name)
    tol = relative_error_bound(precision)
    if not err <= tol:
        return make_row(**base, variant=variant, status="FAILED", rel_error=err,
                        reason=f"max relative error {err:.3g} > tolerance {tol:g} "
                               f"({precision}) against the reference kernel")
    del y
    return make_row(**base, variant=variant, status="ok", rel_error=err,
                    **timed(cfg, fn, cold=cold))


# ---------------------------------------------------------------------------- training step

def make_masked_mlp(sizes: Sequence[int], sparsity: float, seed: int = 0) -> MLP:
    """LeNet-style MLP with random torch.nn.utils.prune masks at `sparsity` on every layer.

    Pruned the way the LTH pipeline does it: `weight = weight_orig * weight_mask` is recomputed
    by a forward pre-hook every step, so the gradient of `weight_orig` is masked too.
    """
    mlp = MLP(sizes[0], tuple(sizes[1:-1]), sizes[-1], seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    for layer in mlp.layers:
        mask = (torch.rand(layer.weight.shape, generator=g) >= sparsity).to(layer.weight.dtype)
        prune.custom_from_mask(layer, "weight", mask)
    return mlp


def _train_step(model, opt, x, y, autocast_dtype, device):
    def step():
        opt.zero_grad(set_to_none=True)
        if autocast_dtype is not None:
            with torch.autocast(device_type=device, dtype=autocast_dtype):
                out = model(x)
        else:
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        return loss
    return step


def run_train_grid(cfg: BenchConfig, progress=None) -> list[dict]:
    """Training step of dense masked vs SparseMLP per model x sparsity x batch x dtype.

    Before timing, the sparse model's logits and gradients are compared with the fp64 dense
    masked model's (same weights); a mismatch marks it FAILED. bf16: the dense masked model runs
    under torch.autocast(bf16) (fp32 master weights, what people run); the sparse model is cast.
    """
    rows = []
    backend = {"cpu": "cpu", "cuda": "triton"}[cfg.device]
    for dtype_name in cfg.dtypes:
        dtype = DTYPES[dtype_name]
        autocast = dtype if dtype in (torch.bfloat16, torch.float16) else None
        for sizes in cfg.train_models:
            for sparsity in cfg.train_sparsities:
                for batch in cfg.train_batches:
                    base = dict(kind="train", shape=model_label(sizes), in_features=sizes[0],
                                out_features=sizes[-1], sparsity=sparsity, batch=batch,
                                dtype=dtype_name, device=cfg.device, cache="hot")
                    rows.extend(_train_cell(cfg, sizes, sparsity, batch, dtype, autocast,
                                            backend, base))
                    if progress is not None:
                        progress.update(1)
    return rows


def _train_cell(cfg, sizes, sparsity, batch, dtype, autocast, backend, base) -> list[dict]:
    dev = cfg.device
    g = torch.Generator().manual_seed(cfg.seed + batch)
    x = torch.randn(batch, sizes[0], generator=g).to(dev)
    y = torch.randint(0, sizes[-1], (batch,), generator=g).to(dev)
    dense = make_masked_mlp(sizes, sparsity, cfg.seed)
    nnz = int(sum(int(lin.weight_mask.sum()) for lin in dense.layers))
    total = sum(lin.weight.numel() for lin in dense.layers)
    base = dict(base, nnz=nnz, density=round(nnz / total, 6))
    name = f"sparse-{backend}"
    sparse, skip = None, None
    try:
        sparse = sparse_mlp_from_mlp(dense, backend=backend).to(dev)
        if autocast is not None:
            sparse = sparse.to(dtype)
    except (ImportError, LthSparseError, RuntimeError, TypeError, ValueError) as exc:
        skip = error_reason(exc)
    # an fp64 twin (same seed -> same weights and masks; pruned modules cannot be deep-copied)
    ref_model = (make_masked_mlp(sizes, sparsity, cfg.seed).double().to(dev)
                 if sparse is not None else None)
    dense = dense.to(dev)
    out_rows = []

    # dense masked: what the LTH pipeline trains today
    opt = torch.optim.Adam([p for p in dense.parameters() if p.requires_grad], lr=1e-3)
    step = _train_step(dense, opt, x, y, autocast, dev)
    try:
        out_rows.append(make_row(**base, provider="dense-masked", status="ok",
                                 **timed(cfg, step)))
    except (RuntimeError, ValueError) as exc:
        out_rows.append(make_row(**base, provider="dense-masked", status="SKIPPED",
                                 reason=error_reason(exc)))
    del dense, opt, step
    if sparse is None:
        out_rows.append(make_row(**base, provider=name, status="SKIPPED", reason=skip))
        return out_rows

    try:
        err = check_sparse_mlp(sparse, ref_model, x, dtype)
    except Exception as exc:  # crashing is failing
        out_rows.append(make_row(**base, provider=name, status="FAILED",
                                 reason="raised " + error_reason(exc)))
        return out_rows
    del ref_model
    tol = relative_error_bound(DTYPE_NAMES[dtype], depth=TRAIN_CHECK_DEPTH)
    if not err <= tol:
        out_rows.append(make_row(**base, provider=name, status="FAILED", rel_error=err,
                                 reason=f"logits or gradients differ from the fp64 dense masked "
                                        f"model by {err:.3g} (> {tol:g})"))
        return out_rows
    opt = torch.optim.Adam(sparse.parameters(), lr=1e-3)
    step = _train_step(sparse, opt, x.to(dtype), y, None, dev)
    out_rows.append(make_row(**base, provider=name, status="ok", rel_error=err,
                             **timed(cfg, step)))
    return out_rows
