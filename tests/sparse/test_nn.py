"""SparseLinear / SparseMLP: custom ops, autograd, modules, torch.compile, state_dict, errors.

The oracle is a dense masked model (nn.Linear / lth_sparse.lottery.models.MLP pruned with
torch.nn.utils.prune) computed in float64 unless a test says otherwise.
"""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.utils import prune

from lth_sparse.bridge.convert import dense_mlp_from_sparse, sparse_mlp_from_mlp
from lth_sparse.errors import BackendUnavailableError, ConfigError
from lth_sparse.lottery.models import MLP
from lth_sparse.sparse import ops
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.nn import SparseLinear, SparseMLP, sparse_linear
from tests.helpers import TOL, dense_of, random_csr


def _csr(n_rows, n_cols, density, dtype=torch.float32, index_dtype=torch.int32, g=None, **kw):
    indptr, indices, values = random_csr(n_rows, n_cols, density, index_dtype=index_dtype,
                                         value_dtype=dtype, generator=g, **kw)
    return CSRMatrix(indptr, indices, values, (n_rows, n_cols)).validate("test")


def _backends():
    """Every backend that can run on CPU tensors here (Triton through its interpreter)."""
    names = ["reference"]
    if ops.backend_status("cpu")[0]:
        names.append("cpu")
    if ops.backend_status("triton")[0] and (torch.cuda.is_available() or ops._triton_interpreted()):
        names.append("triton")
    return names


def _device(backend):
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _away_from_kink(csr, bias, batch, g, margin=1e-2):
    """x whose pre-activations all lie at least `margin` from 0 (ReLU's kink breaks gradcheck)."""
    w = dense_of(csr.indptr, csr.indices, csr.values, csr.shape)
    for _ in range(200):
        x = torch.randn(batch, csr.shape[1], generator=g, dtype=torch.float64)
        z = x @ w.T + (bias if bias is not None else 0)
        if bool((z.abs() >= margin).all()):
            return x
    raise AssertionError("could not draw inputs away from the ReLU kink")


# ---------------------------------------------------------------------------- custom op + autograd

GRADCHECK_CASES = [
    # (n_out, n_in, batch, density, empty_rows, empty_cols)
    (5, 7, 3, 0.4, 1, 2),
    (1, 1, 1, 1.0, 0, 0),
    (6, 3, 2, 0.0, 0, 0),   # nnz = 0
    (9, 13, 4, 0.3, 2, 3),
]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck_custom_op_reference(case, relu):
    n_out, n_in, batch, density, er, ec = case
    g = torch.Generator().manual_seed(hash((case, relu)) % 2**31)
    csr = _csr(n_out, n_in, density, torch.float64, g=g, empty_rows=er, empty_cols=ec)
    t_indptr, t_indices, perm = csr.transpose_pattern()
    bias = torch.randn(n_out, generator=g, dtype=torch.float64)
    x = _away_from_kink(csr, bias, batch, g).requires_grad_()
    values = csr.values.clone().requires_grad_()
    bias.requires_grad_()

    def f(x, values, bias):
        return sparse_linear(x, csr.indptr, csr.indices, values, bias, t_indptr, t_indices, perm,
                             n_out, relu, "reference")

    assert torch.autograd.gradcheck(f, (x, values, bias))
    # Without a bias, and with only some inputs requiring grad.
    assert torch.autograd.gradcheck(lambda v: f(x.detach(), v, None), (values,))


def test_opcheck_custom_ops():
    """Schema, fake (meta) implementations and autograd registration, as torch checks them."""
    g = torch.Generator().manual_seed(1)
    csr = _csr(6, 9, 0.4, g=g, empty_rows=1, empty_cols=2)
    t_indptr, t_indices, perm = csr.transpose_pattern()
    x = torch.randn(4, 9, generator=g, requires_grad=True)
    dy = torch.randn(4, 6, generator=g)
    values = csr.values.clone().requires_grad_()
    bias = torch.randn(6, generator=g, requires_grad=True)
    lib = torch.ops.lth_sparse
    torch.library.opcheck(lib.sparse_linear.default, (x, csr.indptr, csr.indices, values, bias,
                                                      t_indptr, t_indices, perm, 6, True,
                                                      "reference"))
    torch.library.opcheck(lib.spmm.default, (x.detach(), csr.indptr, csr.indices, csr.values,
                                             None, 6, False, "reference"))
    torch.library.opcheck(lib.spmm_t.default, (dy, t_indptr, t_indices, csr.values[perm], 9,
                                               "reference"))
    torch.library.opcheck(lib.sddmm.default, (dy, x.detach(), csr.indptr, csr.indices,
                                              torch.float32, "reference"))


# ---------------------------------------------------------------------------- SparseLinear vs dense

def _masked_dense_linear(csr, bias):
    """nn.Linear in float64 with the CSR's weights and a torch prune mask of its pattern."""
    lin = nn.Linear(csr.shape[1], csr.shape[0], bias=bias is not None, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(dense_of(csr.indptr, csr.indices, csr.values, csr.shape))
        if bias is not None:
            lin.bias.copy_(bias)
    mask = dense_of(csr.indptr, csr.indices, torch.ones(csr.nnz), csr.shape)
    prune.custom_from_mask(lin, "weight", mask)
    return lin


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", _backends())
def test_sparse_linear_matches_masked_dense(backend, dtype, relu):
    if backend == "triton":  # the interpreter is slow: one tiny shape
        n_out, n_in, batch = 7, 11, 3
    else:
        n_out, n_in, batch = 37, 53, 5
    device = _device(backend)
    g = torch.Generator().manual_seed(7)
    csr = _csr(n_out, n_in, 0.3, dtype, index_dtype=torch.uint16, g=g, empty_rows=3,
               empty_cols=4)
    bias = torch.randn(n_out, generator=g).to(dtype)
    layer = SparseLinear(csr, bias, backend=backend, relu=relu).to(device)
    dense = _masked_dense_linear(csr, bias.double())

    x = torch.randn(batch, n_in, generator=g).to(dtype)
    x_dense = x.double().requires_grad_()
    x_sparse = x.to(device).requires_grad_()
    dy = torch.randn(batch, n_out, generator=g)

    y_ref = dense(x_dense)
    y_ref = torch.relu(y_ref) if relu else y_ref
    y = layer(x_sparse)
    assert y.dtype == dtype and y.shape == (batch, n_out)
    (y_ref * dy.double()).sum().backward()
    (y * dy.to(device, dtype)).sum().backward()

    tol = TOL[dtype]
    torch.testing.assert_close(y.double().cpu(), y_ref.detach(), **tol)
    torch.testing.assert_close(x_sparse.grad.double().cpu(), x_dense.grad, **tol)
    rows = torch.repeat_interleave(torch.arange(n_out), (csr.indptr[1:] - csr.indptr[:-1]).long())
    dense_grad_at_nnz = dense.weight_orig.grad[rows, csr.indices.long()]
    assert layer.values.grad.dtype == dtype and layer.values.grad.shape == (csr.nnz,)
    torch.testing.assert_close(layer.values.grad.double().cpu(), dense_grad_at_nnz, **tol)
    assert layer.bias.grad.dtype == dtype
    torch.testing.assert_close(layer.bias.grad.double().cpu(), dense.bias.grad, **tol)


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "reference"])
def test_backend_gradients_match_reference(backend):
    """Each backend's forward and gradients equal the reference backend's (fp32)."""
    g = torch.Generator().manual_seed(11)
    n_out, n_in = (7, 11) if backend == "triton" else (40, 65)
    csr = _csr(n_out, n_in, 0.25, g=g, empty_rows=2, empty_cols=3)
    bias = torch.randn(n_out, generator=g)
    x = torch.randn(4, n_in, generator=g)
    results = []
    for name in ("reference", backend):
        device = _device(name)
        layer = SparseLinear(csr, bias, backend=name, relu=True).to(device)
        xi = x.to(device).requires_grad_()
        y = layer(xi)
        y.square().sum().backward()
        results.append([t.detach().cpu() for t in (y, xi.grad, layer.values.grad, layer.bias.grad)])
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, **TOL[torch.float32])


def test_leading_dimensions_like_nn_linear():
    g = torch.Generator().manual_seed(3)
    csr = _csr(4, 6, 0.5, g=g)
    layer = SparseLinear(csr, torch.randn(4, generator=g), backend="reference")
    x = torch.randn(2, 3, 6, generator=g)
    y = layer(x)
    assert y.shape == (2, 3, 4)
    torch.testing.assert_close(y, layer(x.reshape(6, 6)).reshape(2, 3, 4))
    assert layer(x[0, 0]).shape == (4,)
    torch.testing.assert_close(layer(x[0, 0]), y[0, 0])
    # Non-contiguous input.
    xt = torch.randn(6, 5, generator=g).T
    torch.testing.assert_close(layer(xt), layer(xt.contiguous()))


def test_properties_and_to_csr():
    g = torch.Generator().manual_seed(4)
    csr = _csr(10, 20, 0.3, g=g, empty_rows=2)
    layer = SparseLinear(csr, None, backend="reference")
    assert (layer.in_features, layer.out_features, layer.nnz) == (20, 10, csr.nnz)
    assert layer.sparsity == pytest.approx(csr.sparsity)
    back = layer.to_csr()
    for a, b in ((back.indptr, csr.indptr), (back.indices, csr.indices), (back.values, csr.values)):
        assert torch.equal(a, b)
    assert back.shape == csr.shape
    torch.testing.assert_close(layer.to_dense_weight(), csr.to_dense())
    assert "nnz=" in repr(layer)
    # .double() casts values only; the pattern buffers keep their integer dtypes.
    layer.double()
    assert layer.values.dtype == torch.float64 and layer.indices.dtype == csr.indices.dtype
    assert layer.perm.dtype == torch.int64


# ---------------------------------------------------------------------------- SparseMLP

def _pruned_mlp(seed=0, sizes=(20, (16, 12), 5), amount=0.7):
    mlp = MLP(input_size=sizes[0], hidden=sizes[1], num_classes=sizes[2], seed=seed)
    for i, layer in enumerate(mlp.layers):
        prune.l1_unstructured(layer, "weight", amount=amount if i < len(mlp.layers) - 1 else 0.3)
    with torch.no_grad():  # a kept weight that is exactly zero must stay in the pattern
        kept = mlp.layers[0].weight_mask.nonzero()[0]
        mlp.layers[0].weight_orig[kept[0], kept[1]] = 0.0
        mlp.layers[1].bias.uniform_(-0.1, 0.1)
        mlp(torch.zeros(1, sizes[0]))  # prune recomputes `weight` in a forward pre-hook
    return mlp


def test_from_csr_layers_names_and_bias_none():
    g = torch.Generator().manual_seed(5)
    layers = [("hidden", _csr(6, 10, 0.5, g=g), torch.randn(6, generator=g)),
              ("out", _csr(3, 6, 0.5, g=g), None)]
    model = SparseMLP.from_csr_layers(layers, backend="reference")
    assert model.layer_names == ["hidden", "out"]
    assert model.layers["out"].bias is None
    x = torch.randn(4, 10, generator=g)
    w1, w2 = (c.to_dense() for _, c, _ in layers)
    ref = torch.relu(x @ w1.T + layers[0][2]) @ w2.T
    torch.testing.assert_close(model(x), ref, **TOL[torch.float32])
    for (name, csr, bias), (name2, csr2, bias2) in zip(layers, model.to_csr_layers()):
        assert name == name2 and torch.equal(csr.values, csr2.values)
        assert (bias is None and bias2 is None) or torch.equal(bias, bias2)
    assert dense_mlp_from_sparse(model).layers[1].bias.abs().sum() == 0


def test_adam_steps_match_masked_dense_mlp():
    torch.manual_seed(0)
    dense = _pruned_mlp(seed=3)
    sparse = sparse_mlp_from_mlp(dense, backend="reference")
    dense_params = [p for p in dense.parameters()]
    opt_d = torch.optim.Adam(dense_params, lr=1e-2)
    opt_s = torch.optim.Adam(sparse.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(9)
    for _ in range(5):
        x = torch.randn(16, 20, generator=g)
        target = torch.randint(0, 5, (16,), generator=g)
        losses = []
        for model, opt in ((dense, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for layer, lin in zip(sparse.layers.values(), dense.layers):
        # (lin.weight is only refreshed by the next forward; recompute it)
        torch.testing.assert_close(layer.to_dense_weight(), lin.weight_orig * lin.weight_mask,
                                   **TOL[torch.float32])
        torch.testing.assert_close(layer.bias, lin.bias, **TOL[torch.float32])
        # pruned weights stayed exactly zero and were never parameters
        assert bool((layer.to_dense_weight()[lin.weight_mask == 0] == 0).all())
    assert sum(p.numel() for p in sparse.parameters()) == sparse.nnz + sum(
        lin.bias.numel() for lin in dense.layers)


def test_torch_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    mlp = _pruned_mlp(seed=2)
    eager = sparse_mlp_from_mlp(mlp, backend="reference")
    compiled_model = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(compiled_model, backend=counter, fullgraph=True)
    x = torch.randn(6, 20)
    for fn in (eager, compiled):
        fn(x).logsumexp(1).sum().backward()
    torch.testing.assert_close(compiled(x), eager(x))
    assert counter.frame_count == 1  # one graph, traced once, reused
    targets = [str(n.target) for gm in counter.graphs for n in gm.graph.nodes]
    assert targets.count("lth_sparse.sparse_linear.default") == len(eager.layers)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_state_dict_save_load():
    g = torch.Generator().manual_seed(6)
    layers = [("fc1", _csr(8, 12, 0.4, g=g), torch.randn(8, generator=g)),
              ("fc2", _csr(4, 8, 0.4, g=g), torch.randn(4, generator=g))]
    model = SparseMLP.from_csr_layers(layers, backend="reference")
    keys = set(model.state_dict())
    assert {"layers.fc1.values", "layers.fc1.bias", "layers.fc1.indptr", "layers.fc1.indices",
            "layers.fc1.t_indptr", "layers.fc1.t_indices", "layers.fc1.perm"} <= keys
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    other = SparseMLP.from_csr_layers(
        [(n, CSRMatrix(c.indptr, c.indices, torch.zeros_like(c.values), c.shape), torch.zeros_like(b))
         for n, c, b in layers], backend="reference")
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    x = torch.randn(3, 12, generator=g)
    torch.testing.assert_close(other(x), model(x))


def test_set_backend_and_auto():
    model = sparse_mlp_from_mlp(_pruned_mlp(), backend="auto")
    x = torch.randn(2, 20)
    y_auto = model(x)
    model.set_backend("reference")
    assert all(layer.backend == "reference" for layer in model.layers.values())
    torch.testing.assert_close(model(x), y_auto, **TOL[torch.float32])


# ---------------------------------------------------------------------------- errors

def test_clear_errors(monkeypatch):
    g = torch.Generator().manual_seed(8)
    csr = _csr(4, 6, 0.5, g=g)
    layer = SparseLinear(csr, torch.zeros(4), backend="reference")
    with pytest.raises(ValueError, match=r"in_features=6"):
        layer(torch.randn(2, 5))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias must have shape"):
        SparseLinear(csr, torch.zeros(5))
    with pytest.raises(TypeError, match="CSRMatrix"):
        SparseLinear(torch.randn(4, 6))
    with pytest.raises(ConfigError, match="unknown backend"):
        SparseLinear(csr, backend="cuda")
    monkeypatch.setattr(ops, "backend_status", lambda name: (False, "not built here"))
    with pytest.raises(BackendUnavailableError, match="not built here"):
        layer.set_backend("cpu")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="takes 6 inputs"):
        SparseMLP([SparseLinear(csr), SparseLinear(_csr(3, 6, 0.5, g=g))])
    with pytest.raises(ConfigError, match="activation"):
        SparseMLP([SparseLinear(csr)], activation="tanh")
    model = SparseMLP([SparseLinear(csr, backend="reference")])
    with pytest.raises(ValueError, match="in_features=6"):
        model(torch.randn(2, 1, 2, 2))
    with pytest.raises(TypeError, match="nn.Linear"):
        sparse_mlp_from_mlp(nn.Sequential(nn.Linear(3, 2)))


@pytest.mark.cuda
def test_cuda_auto_matches_cpu_reference():
    mlp = _pruned_mlp(seed=4)
    ref = sparse_mlp_from_mlp(mlp, backend="reference")
    gpu = sparse_mlp_from_mlp(mlp, backend="auto").cuda()
    x = torch.randn(32, 20)
    ref(x).square().sum().backward()
    xg = x.cuda()
    gpu(xg).square().sum().backward()
    torch.testing.assert_close(gpu(xg).cpu(), ref(x), **TOL[torch.float32])
    for (name, a), (_, b) in zip(ref.named_parameters(), gpu.named_parameters()):
        torch.testing.assert_close(b.grad.cpu(), a.grad, msg=name, **TOL[torch.float32])


@pytest.mark.parametrize("backend", _backends())
def test_inference_fast_path_matches_autograd_path(backend):
    """Under no_grad SparseLinear skips the custom op; both paths must compute the same thing."""
    mlp = MLP(input_size=53, hidden=(31, 17), num_classes=7, seed=4)
    for layer in mlp.layers:
        prune.random_unstructured(layer, "weight", amount=0.7)
    model = sparse_mlp_from_mlp(mlp, backend=backend)
    x = torch.randn(9, 53)
    with torch.no_grad():
        fast = model(x)
    slow = model(x)  # values require grad: recorded through the custom op
    assert slow.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, slow.detach(), **TOL[torch.float32])
    with torch.no_grad(), pytest.raises(ValueError, match="in_features=53"):
        model.layers["fc1"](torch.randn(2, 52))
    with torch.no_grad(), pytest.raises(TypeError, match="differs from the layer"):
        model(x.double())


@pytest.mark.parametrize("relu", [False, True])
def test_eager_autograd_function_gradcheck_and_matches_custom_op(relu):
    """Eager training goes through _EagerSparseLinear, compile through the custom op: both must
    be correct (gradcheck, float64, reference backend) and agree with each other."""
    from lth_sparse.sparse.nn import _EagerSparseLinear

    g = torch.Generator().manual_seed(11)
    ip, idx, val = random_csr(7, 9, 0.5, empty_rows=2, empty_cols=2, value_dtype=torch.float64,
                              generator=g)
    csr = CSRMatrix(ip, idx, val, (7, 9))
    t_ip, t_idx, perm = csr.transpose_pattern()
    x = torch.randn(5, 9, dtype=torch.float64, generator=g, requires_grad=True)
    v = val.clone().requires_grad_(True)
    b = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)

    def eager(x, v, b):
        return _EagerSparseLinear.apply(x, ip, idx, v, b, t_ip, t_idx, perm, 7, relu, "reference")

    def op(x, v, b):
        return sparse_linear(x, ip, idx, v, b, t_ip, t_idx, perm, 7, relu, "reference")

    with torch.no_grad():  # keep pre-activations away from the ReLU kink
        pre = op(x, v, b) if not relu else sparse_linear(x, ip, idx, v, b, t_ip, t_idx, perm, 7,
                                                         False, "reference")
        b += torch.where(pre.abs().min(0).values < 0.05, 0.2, 0.0)
    assert torch.autograd.gradcheck(eager, (x, v, b))
    ge = torch.autograd.grad(eager(x, v, b).square().sum(), (x, v, b))
    go = torch.autograd.grad(op(x, v, b).square().sum(), (x, v, b))
    for a, c in zip(ge, go):
        torch.testing.assert_close(a, c, **TOL[torch.float64])


@pytest.mark.parametrize("backend", _backends())
def test_inference_plan_matches_layer_by_layer_and_follows_updates(backend):
    """SparseMLP inference runs one prepared chain; it must equal the layer-by-layer forward
    and notice in-place updates of the values and bias."""
    mlp = MLP(input_size=41, hidden=(23, 13), num_classes=5, seed=7)
    for layer in mlp.layers:
        prune.random_unstructured(layer, "weight", amount=0.6)
    model = sparse_mlp_from_mlp(mlp, backend=backend)
    x = torch.randn(6, 41)

    def layer_by_layer(h):
        for layer in model.layers.values():
            h = layer(h)
        return h

    with torch.no_grad():
        torch.testing.assert_close(model(x), layer_by_layer(x), **TOL[torch.float32])
        model.layers["fc2"].values.mul_(-2.0)
        model.layers["fc3"].bias.add_(1.0)
        torch.testing.assert_close(model(x), layer_by_layer(x), **TOL[torch.float32])
        copy_ = copy.deepcopy(model)
        copy_.layers["fc1"].values.zero_()
        assert not torch.allclose(copy_(x), model(x))
    buf = io.BytesIO()
    torch.save(model, buf)  # the cached plan is not pickled
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), **TOL[torch.float32])
