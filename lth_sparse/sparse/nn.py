"""Autograd and modules over the sparse kernels: `SparseLinear`, `SparseMLP`.

Three layers, as in Liger-Kernel: the kernels (`lth_sparse.sparse.ops`, pure functions), torch custom
ops wrapping them (`lth_sparse::spmm`, `lth_sparse::spmm_t`, `lth_sparse::sddmm`, plus
`lth_sparse::sparse_linear` which carries the autograd formula), and nn.Modules.

The ops are registered with `torch.library.custom_op` and have fake (meta) implementations, so
`torch.compile(model, fullgraph=True)` traces a SparseMLP forward and backward without graph
breaks: the compiler sees each kernel as one opaque node of known output shape.

Backward of y = x W^T + b (W in CSR with a fixed pattern, `values` trainable):
  dY <- dY * (y > 0) when the ReLU is fused,
  dX = dY W      via spmm_t over the cached transposed pattern (a gather, no atomics),
  dValues        = sddmm(dY, X): the weight gradient at surviving weights only,
  dBias          = dY.sum(0).
Gradients of fp16/bf16 parameters are accumulated in fp32, then cast to the parameter dtype.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from lth_sparse.errors import BackendUnavailableError, ConfigError
from lth_sparse.sparse import ops
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.kernels import reference
from lth_sparse.sparse.kernels.base import ChainLayer

__all__ = ["sparse_linear", "SparseLinear", "SparseMLP"]


# The kernels' rule: fp64 stays fp64, everything else accumulates in fp32.
_acc_dtype = reference.accumulation_dtype

# Bumped whenever a SparseLinear's tensors may be swapped without a version change (.to(),
# .half(), ... replace parameter .data): every cached SparseMLP inference plan is then stale.
_conversions = [0]

# ---------------------------------------------------------------------------- custom ops
# Kernel ops: thin wrappers over lth_sparse.sparse.ops (which checks arguments and picks the backend at
# run time). Their fake implementations only state output shape and dtype.

@torch.library.custom_op("lth_sparse::spmm", mutates_args=())
def _spmm_op(x: Tensor, indptr: Tensor, indices: Tensor, values: Tensor, bias: Optional[Tensor],
             n_out: int, relu: bool, backend: str) -> Tensor:
    return ops.spmm(x, indptr, indices, values, n_out, bias=bias, relu=relu, backend=backend)


@_spmm_op.register_fake
def _(x, indptr, indices, values, bias, n_out, relu, backend):
    return x.new_empty((x.shape[0], n_out))


@torch.library.custom_op("lth_sparse::spmm_t", mutates_args=())
def _spmm_t_op(dy: Tensor, t_indptr: Tensor, t_indices: Tensor, t_values: Tensor, n_in: int,
               backend: str) -> Tensor:
    return ops.spmm_t(dy, t_indptr, t_indices, t_values, n_in, backend=backend)


@_spmm_t_op.register_fake
def _(dy, t_indptr, t_indices, t_values, n_in, backend):
    return dy.new_empty((dy.shape[0], n_in))


@torch.library.custom_op("lth_sparse::sddmm", mutates_args=())
def _sddmm_op(dy: Tensor, x: Tensor, indptr: Tensor, indices: Tensor, out_dtype: torch.dtype,
              backend: str) -> Tensor:
    return ops.sddmm(dy, x, indptr, indices, backend=backend, out_dtype=out_dtype)


@_sddmm_op.register_fake
def _(dy, x, indptr, indices, out_dtype, backend):
    return dy.new_empty((indices.shape[0],), dtype=out_dtype)


# The differentiable op. It takes the transposed pattern (t_indptr, t_indices, perm) as inputs
# so that its backward can reach them: register_autograd's backward sees only the op's inputs.
@torch.library.custom_op("lth_sparse::sparse_linear", mutates_args=())
def _sparse_linear_op(x: Tensor, indptr: Tensor, indices: Tensor, values: Tensor,
                      bias: Optional[Tensor], t_indptr: Tensor, t_indices: Tensor, perm: Tensor,
                      n_out: int, relu: bool, backend: str) -> Tensor:
    return ops.spmm(x, indptr, indices, values, n_out, bias=bias, relu=relu, backend=backend)


@_sparse_linear_op.register_fake
def _(x, indptr, indices, values, bias, t_indptr, t_indices, perm, n_out, relu, backend):
    return x.new_empty((x.shape[0], n_out))


def _setup_context(ctx, inputs, output):
    x, indptr, indices, values, bias, t_indptr, t_indices, perm, n_out, relu, backend = inputs
    ctx.relu = relu
    ctx.backend = backend
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None
    # The ReLU mask is read from the output (y > 0 iff the pre-activation > 0): no extra buffer.
    ctx.save_for_backward(x, indptr, indices, values, t_indptr, t_indices, perm,
                          output if relu else None)


def _grads(ctx, grad_y, spmm_t, sddmm):
    """Gradients of y = x W^T + b (ReLU) for x, values and bias, through the given kernels."""
    x, indptr, indices, values, t_indptr, t_indices, perm, y = ctx.saved_tensors
    need_x, need_values, need_bias = (ctx.needs_input_grad[0], ctx.needs_input_grad[3],
                                      ctx.needs_input_grad[4])
    dy = grad_y
    if ctx.relu:
        dy = dy * (y > 0).to(dy.dtype)
    dy = dy.to(x.dtype)  # kernels take activations and gradients in one dtype
    dx = dvalues = dbias = None
    if need_x:
        # W^T's values in the transposed order; perm was built once with the pattern.
        dx = spmm_t(dy, t_indptr, t_indices, values[perm], x.shape[1], backend=ctx.backend)
    if need_values:
        dvalues = sddmm(dy, x, indptr, indices, out_dtype=_acc_dtype(values.dtype),
                        backend=ctx.backend).to(values.dtype)
    if need_bias and ctx.has_bias:
        dbias = dy.sum(0, dtype=_acc_dtype(ctx.bias_dtype)).to(ctx.bias_dtype)
    return dx, None, None, dvalues, dbias, None, None, None, None, None, None


def _backward(ctx, grad_y):
    return _grads(ctx, grad_y, _spmm_t_op, _sddmm_op)


class _EagerSparseLinear(torch.autograd.Function):
    """Eager twin of lth_sparse::sparse_linear: the same maths and the same saved tensors, but
    calling lth_sparse.sparse.ops directly. The custom-op dispatch costs tens of microseconds per call,
    as much as a small layer's kernel, so eager training uses this; torch.compile uses the op."""

    @staticmethod
    def forward(ctx, x, indptr, indices, values, bias, t_indptr, t_indices, perm, n_out, relu,
                backend):
        y = ops.spmm_unchecked(x, indptr, indices, values, n_out, bias, relu, backend=backend)
        _setup_context(ctx, (x, indptr, indices, values, bias, t_indptr, t_indices, perm, n_out,
                             relu, backend), y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return _grads(ctx, grad_y, ops.spmm_t, ops.sddmm)


_sparse_linear_op.register_autograd(_backward, setup_context=_setup_context)


def sparse_linear(x: Tensor, indptr: Tensor, indices: Tensor, values: Tensor,
                  bias: Tensor | None, t_indptr: Tensor, t_indices: Tensor, perm: Tensor,
                  n_out: int, relu: bool = False, backend: str = "auto") -> Tensor:
    """Differentiable y = x W^T + b (then ReLU if `relu`), W CSR of shape (n_out, K).

    x: (B, K) float; indptr (n_out+1,) int32/int64; indices (nnz,) int32/int64/uint16;
    values (nnz,) float, same dtype as x; bias (n_out,) or None; the transposed pattern
    (t_indptr (K+1,), t_indices (nnz,), perm (nnz,) int64) with W^T's values = values[perm].
    Returns (B, n_out) in x's dtype. Gradients flow to x, values and bias.
    """
    return _sparse_linear_op(x, indptr, indices, values, bias, t_indptr, t_indices, perm,
                             int(n_out), bool(relu), backend)


# ---------------------------------------------------------------------------- modules

def _check_backend_name(backend: str) -> str:
    """Raise now (not at the first forward) for an unknown or unavailable backend."""
    if backend == "auto":
        return backend
    if backend not in ops.BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of auto, {', '.join(ops.BACKENDS)}")
    ok, reason = ops.backend_status(backend)
    if not ok:
        raise BackendUnavailableError(f"backend {backend!r} is unavailable: {reason}")
    return backend


class SparseLinear(nn.Module):
    """y = x W^T + b with W stored in CSR (fixed pattern, trainable values); ReLU fused if `relu`.

    Parameters: `values` (nnz,) and `bias` (out_features,) or None. Buffers (moved by .to(),
    saved in state_dict): `indptr` (out+1,), `indices` (nnz,) column ids, and the cached
    transposed pattern `t_indptr` (in+1,), `t_indices` (nnz,) row ids, `perm` (nnz,) int64 with
    W^T's values = values[perm] (used by backward for dX without atomics).

    Input (..., in_features) in the values' dtype -> output (..., out_features); a 1-D input
    (in_features,) gives (out_features,), as nn.Linear does. Only stored weights ever get a
    gradient: pruned weights do not exist here.
    """

    def __init__(self, csr: CSRMatrix, bias: Tensor | None = None, backend: str = "auto",
                 relu: bool = False, name: str = "weight"):
        super().__init__()
        if not isinstance(csr, CSRMatrix):
            raise TypeError(f"SparseLinear needs a CSRMatrix, got {type(csr).__name__}; build one "
                            "with CSRMatrix.from_dense(...) or use lth_sparse.bridge.convert.sparse_linear_from_linear(...)")
        csr.validate(name)
        n_out, n_in = csr.shape
        t_indptr, t_indices, perm = csr.transpose_pattern()
        self.values = nn.Parameter(csr.values.detach().clone())
        if bias is not None:
            bias = torch.as_tensor(bias).detach()
            if bias.shape != (n_out,):
                raise ValueError(f"layer {name!r}: bias must have shape ({n_out},) to match the "
                                 f"weight's {n_out} rows, got {tuple(bias.shape)}")
            # One dtype per layer: the kernels take bias in the activations' (= values') dtype.
            bias = nn.Parameter(bias.to(device=csr.device, dtype=csr.dtype).clone())
        self.bias = bias
        self.register_buffer("indptr", csr.indptr.clone())
        self.register_buffer("indices", csr.indices.clone())
        self.register_buffer("t_indptr", t_indptr.clone())
        self.register_buffer("t_indices", t_indices.clone())
        self.register_buffer("perm", perm.clone())
        self.relu = bool(relu)
        self.backend = _check_backend_name(backend)

    # ------------------------------------------------------------------ properties

    @property
    def in_features(self) -> int:
        return self.t_indptr.numel() - 1

    @property
    def out_features(self) -> int:
        return self.indptr.numel() - 1

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def sparsity(self) -> float:
        """Fraction of the dense weight that is pruned away: 1 - nnz / (out * in)."""
        return 1.0 - self.nnz / (self.out_features * self.in_features)

    def set_backend(self, backend: str) -> "SparseLinear":
        self.backend = _check_backend_name(backend)
        return self

    def to_csr(self) -> CSRMatrix:
        """The current weight as a CSRMatrix (detached copy of the values)."""
        return CSRMatrix(self.indptr.clone(), self.indices.clone(), self.values.detach().clone(),
                         self.shape)

    def to_dense_weight(self) -> Tensor:
        """Dense (out_features, in_features) weight, zeros where pruned (differentiable)."""
        return reference.to_dense(self.indptr, self.indices, self.values, self.shape)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.nnz}, sparsity={self.sparsity:.4f}, bias={self.bias is not None}, "
                f"relu={self.relu}, backend={self.backend!r}, values={self.values.dtype}, "
                f"indices={self.indices.dtype}")

    # ------------------------------------------------------------------ forward

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error unless x is (..., in_features) in the values' dtype and device."""
        n_in = self.in_features
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[-1] != n_in:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"SparseLinear expects input (..., {n_in}) (in_features={n_in}), "
                             f"got {got}")
        if x.dtype != self.values.dtype:
            raise TypeError(f"SparseLinear input dtype {x.dtype} differs from the layer's "
                            f"{self.values.dtype}; convert the input (x.to({self.values.dtype})) "
                            "or the model (model.to(dtype))")
        if x.device != self.values.device:
            raise ValueError(f"SparseLinear input is on {x.device} but the layer is on "
                             f"{self.values.device}; move one with .to(device)")

    def _apply(self, fn, *args, **kwargs):
        _conversions[0] += 1  # conversions swap .data in place: cached plans cannot see it
        return super()._apply(fn, *args, **kwargs)

    def records_graph(self, x: Tensor) -> bool:
        """Whether a forward on x must record an autograd graph."""
        return torch.is_grad_enabled() and (x.requires_grad or self.values.requires_grad or (
            self.bias is not None and self.bias.requires_grad))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        n_in, n_out = self.in_features, self.out_features
        lead = x.shape[:-1]
        x2 = x.reshape(-1, n_in)
        args = (x2, self.indptr, self.indices, self.values, self.bias, self.t_indptr,
                self.t_indices, self.perm, n_out, self.relu, self.backend)
        if torch.compiler.is_compiling():
            y = sparse_linear(*args)  # the custom op: torch.compile sees one node per layer
        else:
            # Eager: the autograd.Function skips the custom-op dispatch, which costs as much as
            # a small layer's kernel; the pattern was validated when the layer was built.
            y = _EagerSparseLinear.apply(*args)
        return y.reshape(*lead, n_out)


class SparseMLP(nn.Module):
    """A stack of SparseLinear layers with ReLU between (fused into the hidden layers' kernels).

    input (B, in) or (B, 1, 28, 28) (flattened to (B, in)) in the values' dtype -> logits
    (B, num_classes). Layers live in the nn.ModuleDict `layers`, named "fc1", "fc2", ... unless
    names are given; the ReLU flag of each layer is set here (all but the last).
    """

    def __init__(self, layers: Sequence[SparseLinear] | dict[str, SparseLinear],
                 activation: str = "relu"):
        super().__init__()
        if activation != "relu":
            raise ConfigError(f"unsupported activation {activation!r}; SparseMLP supports 'relu'")
        if not isinstance(layers, dict):
            layers = {f"fc{i + 1}": layer for i, layer in enumerate(layers)}
        if not layers:
            raise ConfigError("SparseMLP needs at least one layer")
        items = list(layers.items())
        for i, (name, layer) in enumerate(items):
            if not isinstance(layer, SparseLinear):
                raise TypeError(f"layer {name!r} must be a SparseLinear, got {type(layer).__name__}")
            if i and layer.in_features != items[i - 1][1].out_features:
                prev = items[i - 1][0]
                raise ConfigError(f"layer {name!r} takes {layer.in_features} inputs but layer "
                                  f"{prev!r} produces {items[i - 1][1].out_features}")
            layer.relu = i < len(items) - 1
        self.activation = activation
        self.layers = nn.ModuleDict(layers)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_csr_layers(cls, layers: Sequence[tuple[str, CSRMatrix, Tensor | None]],
                        activation: str = "relu", backend: str = "auto") -> "SparseMLP":
        """From (name, CSRMatrix (out, in), bias (out,) or None) per layer, input to output."""
        return cls({name: SparseLinear(csr, bias, backend=backend, name=name)
                    for name, csr, bias in layers}, activation=activation)

    # ------------------------------------------------------------------ exports

    def to_csr_layers(self) -> list[tuple[str, CSRMatrix, Tensor | None]]:
        """The inverse of from_csr_layers: (name, CSRMatrix, bias or None) per layer (copies)."""
        return [(name, layer.to_csr(),
                 layer.bias.detach().clone() if layer.bias is not None else None)
                for name, layer in self.layers.items()]

    # ------------------------------------------------------------------ properties

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers.keys())

    @property
    def nnz(self) -> int:
        return sum(layer.nnz for layer in self.layers.values())

    @property
    def sparsity(self) -> float:
        """Fraction of all weights (biases excluded) that are pruned away."""
        dense = sum(layer.in_features * layer.out_features for layer in self.layers.values())
        return 1.0 - self.nnz / dense

    @property
    def in_features(self) -> int:
        return next(iter(self.layers.values())).in_features

    def set_backend(self, backend: str) -> "SparseMLP":
        """Run every layer on `backend` ("auto", "reference", "cpu" or "triton")."""
        _check_backend_name(backend)
        for layer in self.layers.values():
            layer.set_backend(backend)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            x = x.flatten(1)
        # Direct dict reads: nn.Module.__getattr__ costs ~0.3 us each, and at batch 1 the
        # whole native forward of a LeNet ticket takes about 10 us.
        layers = list(self._modules["layers"]._modules.values())
        if not torch.compiler.is_compiling():
            if not self._records_graph(x, layers):
                plan = self._inference_plan(x, layers)
                if plan is not None:
                    return plan(x)
            else:
                # A training forward: an optimizer step may follow that updates the values in
                # place without bumping their version counters (torch's fused Adam does not),
                # which the plan's owning engine would not see. The next inference call
                # rebuilds it (O(nnz)).
                self.__dict__.pop("_plan", None)
        for layer in layers:
            x = layer(x)
        return x

    @staticmethod
    def _records_graph(x: Tensor, layers: list[SparseLinear]) -> bool:
        if not torch.is_grad_enabled():
            return False
        return x.requires_grad or any(l.records_graph(x) for l in layers)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_plan", None)  # derived, and may hold closures: rebuilt on first use
        return state

    def _inference_plan(self, x: Tensor, layers: list[SparseLinear]):
        """The whole network as one ops.prepare_chain (on the cpu backend: the native engine),
        rebuilt when a layer's parameters are replaced, modified in place (their version
        counter moves) or converted (.to(), .half(): SparseLinear._apply), or a backend
        changes; None when the layers use different backends. At small batches per-layer
        call overhead is most of the time, and this check runs per call: it reads version
        counters through detached views (a Parameter's own attribute reads cost ~0.2 us each).
        x is checked fully when the plan is (re)built, its width otherwise (the plan pins
        x's dtype and device). Not seen: assigning a parameter's .data directly."""
        c = self.__dict__.get("_plan")
        if (c is not None and c.generation == _conversions[0] and x.dtype is c.dtype
                and (x.is_cpu if c.cpu else x.device == c.device) and len(layers) == len(c.checks)):
            for l, (layer, v, vd, v_version, b, bd, b_version, backend) in zip(layers, c.checks):
                params = l._parameters
                if (l is not layer or params["values"] is not v or vd._version != v_version
                        or params.get("bias") is not b
                        or (bd is not None and bd._version != b_version) or l.backend != backend):
                    break
            else:
                if x.shape[1] != c.n_in:
                    layers[0].check_input(x)  # raises, naming the expected width
                return c.plan
        layers[0].check_input(x)
        if len({l.backend for l in layers}) != 1:
            return None
        chain = [ChainLayer(l.indptr, l.indices, l.values.detach(),
                            None if l.bias is None else l.bias.detach(), l.relu,
                            l.out_features, l.in_features)
                 for l in layers]
        plan = ops.prepare_chain(chain, x.device, x.dtype, layers[0].backend)
        self.__dict__["_plan"] = _PlanCache(x, layers, plan)  # not in state_dict, not pickled
        return plan


class _PlanCache:
    """A SparseMLP's prepared inference chain and what it was built from."""

    __slots__ = ("plan", "dtype", "device", "cpu", "n_in", "generation", "checks")

    def __init__(self, x: Tensor, layers: list[SparseLinear], plan):
        self.plan = plan
        self.dtype, self.device, self.cpu = x.dtype, x.device, x.is_cpu
        self.n_in = layers[0].in_features
        self.generation = _conversions[0]
        checks = []
        for l in layers:
            v, b = l._parameters["values"], l._parameters.get("bias")
            # detached views share the parameters' version counters
            vd, bd = v.detach(), (None if b is None else b.detach())
            checks.append((l, v, vd, vd._version, b, bd, None if bd is None else bd._version,
                           l.backend))
        self.checks = tuple(checks)
