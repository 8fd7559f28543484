"""The native whole-network engine (lth_sparse.sparse.engine.Engine, _C.SparseMLPEngine).

Oracle: the pure-PyTorch reference kernel (kernels/reference.spmm) applied layer by layer in
float64. Every path of the engine (gather, tiled; serial, team splitting rows, threads sharing
out blocks/tiles) is pinned explicitly, on awkward networks: empty rows and columns, a layer
without nonzeros, 1x1 layers, batch 0.
"""
from __future__ import annotations

import copy
import gc
import threading

import numpy as np
import pytest
import torch

from lth_sparse.errors import CSRError
from lth_sparse.sparse import engine as engine_mod
from lth_sparse.sparse import ops
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.engine import Engine
from lth_sparse.sparse.kernels import reference
from lth_sparse.sparse.kernels.base import ChainLayer
from lth_sparse.sparse.nn import SparseMLP
from lth_sparse.sparse.ticket_file import load_ticket, save_ticket
from tests.helpers import TOL, fresh_seed, random_csr

pytestmark = pytest.mark.skipif(not engine_mod.available()[0],
                                reason=f"engine: {engine_mod.available()[1]}")

F32 = TOL[torch.float32]


def _layer(n_out, n_in, density, g, index_dtype=torch.int32, bias=True, **kw):
    indptr, indices, values = random_csr(n_out, n_in, density, index_dtype=index_dtype,
                                         generator=g, **kw)
    # scaled so activations stay O(1) through deep nets: tolerances stay meaningful
    values = values / max(1.0, (density * n_in) ** 0.5)
    csr = CSRMatrix(indptr, indices, values, (n_out, n_in)).validate("test")
    b = torch.randn(n_out, generator=g) if bias else None
    return csr, b


def _reference(layers, x, relu=None):
    """float64 oracle: reference.spmm layer by layer, ReLU after all but the last."""
    n = len(layers)
    h = x.to(torch.float64)
    for i, (csr, bias) in enumerate(layers):
        out = torch.empty(h.shape[0], csr.n_rows, dtype=torch.float64)
        r = (i < n - 1) if relu is None else relu[i]
        reference.spmm(h, csr.indptr, csr.indices, csr.values.to(torch.float64),
                       None if bias is None else bias.to(torch.float64), r, out)
        h = out
    return h


def _net(kind, g, index_dtype=torch.int32):
    if kind == "one_layer":
        return [_layer(37, 53, 0.3, g, index_dtype)]
    if kind == "five_layers":
        return [_layer(40, 70, 0.3, g, index_dtype, empty_rows=5, empty_cols=7),
                _layer(33, 40, 0.4, g, index_dtype, empty_cols=4),
                _layer(1, 33, 0.5, g, index_dtype),
                _layer(29, 1, 0.9, g, index_dtype),
                _layer(11, 29, 0.4, g, index_dtype, bias=False)]
    if kind == "empty_layer":  # a layer with nnz = 0: its output is its bias (then ReLU)
        return [_layer(20, 30, 0.3, g, index_dtype), _layer(15, 20, 0.0, g, index_dtype),
                _layer(6, 15, 0.5, g, index_dtype)]
    if kind == "one_by_one":
        return [_layer(1, 1, 1.0, g, index_dtype), _layer(1, 1, 1.0, g, index_dtype)]
    if kind == "lenet":
        return [_layer(300, 784, 0.107, g, index_dtype), _layer(100, 300, 0.107, g, index_dtype),
                _layer(10, 100, 0.2, g, index_dtype)]
    raise AssertionError(kind)


NETS = ["one_layer", "five_layers", "empty_layer", "one_by_one", "lenet"]
BATCHES = [0, 1, 2, 3, 17, 300]


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("index_dtype", [torch.uint16, torch.int32])
def test_every_path_matches_reference(kind, index_dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net(kind, g, index_dtype)
    eng = Engine(layers)
    for team in (False, True):
        # 0 forces the threads to share even tiny calls: the team paths run on these shapes
        eng.native.parallel_min_work = 0 if team else -1
        for batch in BATCHES:
            x = torch.randn(batch, layers[0][0].n_cols, generator=g)
            want = _reference(layers, x).to(torch.float32)
            for path in ("auto", "gather", "tiled"):
                for threads in (1, 2):
                    out = torch.full((batch, eng.n_out), float("nan"))
                    eng.forward_into(x, out, path=path, threads=threads)
                    torch.testing.assert_close(
                        out, want, **F32,
                        msg=lambda m: f"{kind} batch={batch} {path} threads={threads} "
                                      f"team={team}: {m}")


def test_paths_agree_across_the_crossover():
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("lenet", g, torch.uint16)
    eng = Engine(layers)
    tile = eng.native.TILE_WIDTH
    edge = eng.native.GATHER_MAX_BATCH
    for batch in sorted({edge, edge + 1, tile - 1, tile, tile + 1, 2 * tile + 3}):
        x = torch.randn(batch, 784, generator=g)
        want = _reference(layers, x).to(torch.float32)
        torch.testing.assert_close(eng(x), want, **F32)


def test_call_accepts_non_contiguous_and_half_inputs():
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("five_layers", g)
    eng = Engine(layers)
    base = torch.randn(70, 9, generator=g)
    x = base.t()  # (9, 70), not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(eng(x), _reference(layers, x).to(torch.float32), **F32)
    for dt in (torch.float16, torch.bfloat16):
        xh = x.to(dt)
        y = eng(xh)
        assert y.dtype == dt
        torch.testing.assert_close(y, _reference(layers, xh).to(dt), **TOL[dt])


def test_relu_flags_are_honoured():
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("five_layers", g)
    relu = [True, False, True, False, True]
    x = torch.randn(5, 70, generator=g)
    out = Engine(layers, relu=relu)(x)
    torch.testing.assert_close(out, _reference(layers, x, relu).to(torch.float32), **F32)
    assert bool((out >= 0).all())


def test_borrow_reads_the_tensors_and_copy_does_not():
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("one_layer", g)
    borrowed, copied = Engine(layers, copy=False), Engine(layers, copy=True)
    assert not borrowed.copies and copied.copies
    x = torch.randn(4, 53, generator=g)
    before = _reference(layers, x).to(torch.float32)
    torch.testing.assert_close(borrowed(x), before, **F32)
    layers[0][0].values.mul_(2.0)  # in place, into the memory the borrowed engine reads
    after = _reference(layers, x).to(torch.float32)
    torch.testing.assert_close(borrowed(x), after, **F32)
    torch.testing.assert_close(copied(x), before, **F32)


def test_borrowed_arrays_outlive_their_python_names():
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("five_layers", g)
    x = torch.randn(3, 70, generator=g)
    want = _reference(layers, x).to(torch.float32)
    eng = Engine([(CSRMatrix(c.indptr.clone(), c.indices.clone(), c.values.clone(), c.shape), b)
                  for c, b in layers], copy=False)
    gc.collect()  # the only references to the cloned arrays are the engine's
    junk = [torch.randn(1000) for _ in range(50)]  # reuse freed memory, if any was freed
    torch.testing.assert_close(eng(x), want, **F32)
    del junk


def test_concurrent_forward_from_two_threads():
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("lenet", g, torch.uint16)
    eng = Engine(layers, threads=2)
    inputs = [torch.randn(b, 784, generator=g) for b in (1, 3, 17, 130)]
    wants = [_reference(layers, x).to(torch.float32) for x in inputs]
    errors = []

    def work(offset):
        try:
            for i in range(40):
                k = (i + offset) % len(inputs)
                torch.testing.assert_close(eng(inputs[k]), wants[k], **F32)
        except Exception as exc:  # reported below: an assertion in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(o,)) for o in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_int64_indices_are_converted():
    g = torch.Generator().manual_seed(fresh_seed())
    csr, b = _layer(12, 30, 0.3, g)
    csr64 = CSRMatrix(csr.indptr.long(), csr.indices.long(), csr.values, csr.shape)
    x = torch.randn(2, 30, generator=g)
    torch.testing.assert_close(Engine([(csr64, b)])(x),
                               _reference([(csr, b)], x).to(torch.float32), **F32)


# ---------------------------------------------------------------------------- bad input

def test_bad_inputs_raise_clear_errors():
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("one_layer", g)
    eng = Engine(layers)
    with pytest.raises(ValueError, match=r"shape \(B, 53\)"):
        eng(torch.randn(2, 52))
    with pytest.raises(ValueError, match=r"shape \(B, 53\)"):
        eng(torch.randn(53))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        eng(torch.randn(2, 53, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        eng(np.zeros((2, 53), np.float32))
    with pytest.raises(ValueError, match="must have shape"):
        eng.forward_into(torch.randn(2, 53), torch.empty(3, eng.n_out))
    with pytest.raises(ValueError, match="C-contiguous"):
        eng.forward_into(torch.randn(53, 2).t(), torch.empty(2, eng.n_out))
    with pytest.raises(ValueError, match="path must be"):
        eng.forward_into(torch.randn(2, 53), torch.empty(2, eng.n_out), path="fast")


def test_layers_that_do_not_chain_are_rejected():
    g = torch.Generator().manual_seed(fresh_seed())
    a, b = _layer(10, 20, 0.3, g), _layer(5, 11, 0.3, g)
    with pytest.raises(ValueError, match="layer 1 takes 11 inputs but layer 0 produces 10"):
        Engine([a, b])
    with pytest.raises(ValueError, match="bias must have shape"):
        Engine([(a[0], torch.zeros(3))])
    with pytest.raises(TypeError, match="CSRMatrix"):
        Engine([a[0]])
    with pytest.raises(ValueError, match="at least one layer"):
        Engine([])


def test_native_binding_checks_arrays_and_pattern():
    C = engine_mod._ext.extension()
    ip = np.array([0, 1, 2], np.int32)
    ix = np.array([0, 2], np.int32)
    v = np.ones(2, np.float32)
    C.SparseMLPEngine([(ip, ix, v, None, 3, False)])  # valid
    with pytest.raises(ValueError, match=r"column index 2 .* outside \[0, 2\)"):
        C.SparseMLPEngine([(ip, ix, v, None, 2, False)])
    with pytest.raises(ValueError, match="end at nnz"):
        C.SparseMLPEngine([(np.array([0, 1, 1], np.int32), ix, v, None, 3, False)])
    with pytest.raises(ValueError, match="non-decreasing"):
        C.SparseMLPEngine([(np.array([0, 3, 2], np.int32), np.array([0, 1], np.int32), v,
                            None, 3, False)])
    with pytest.raises(TypeError, match="values must have dtype float32, got float64"):
        C.SparseMLPEngine([(ip, ix, v.astype(np.float64), None, 3, False)])
    with pytest.raises(TypeError, match="uint16 or int32"):
        C.SparseMLPEngine([(ip, ix.astype(np.int64), v, None, 3, False)])
    with pytest.raises(ValueError, match="bias must have shape"):
        C.SparseMLPEngine([(ip, ix, v, np.ones(3, np.float32), 3, False)])
    with pytest.raises(ValueError, match="must chain"):
        C.SparseMLPEngine([(ip, ix, v, None, 3, True), (ip, ix, v, None, 3, False)])
    with pytest.raises(TypeError, match="must be a tuple"):
        C.SparseMLPEngine([[ip, ix, v, None, 3, False]])
    eng = C.SparseMLPEngine([(ip, ix, v, None, 3, False)])
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        eng.forward(x, x.reshape(3, 2)[:2], 1)  # out (2, 2) is a view of x's memory
    with pytest.raises(ValueError, match="batch must be >= 0"):
        eng.forward_ptr(0, -1, 0)


# ---------------------------------------------------------------------------- SparseMLP

def _mlp(g, dtype=torch.float32, backend="auto"):
    layers = _net("lenet", g, torch.uint16)
    named = [(f"fc{i + 1}", CSRMatrix(c.indptr, c.indices, c.values.to(dtype), c.shape),
              b.to(dtype)) for i, (c, b) in enumerate(layers)]
    return layers, SparseMLP.from_csr_layers(named, backend=backend)


def test_sparse_mlp_inference_runs_on_the_engine_and_matches_reference():
    g = torch.Generator().manual_seed(fresh_seed())
    layers, model = _mlp(g)
    ref_model = copy.deepcopy(model).set_backend("reference")
    for batch in (0, 1, 5, 200):
        x = torch.randn(batch, 1, 28, 28, generator=g)  # flattened by the model
        with torch.no_grad():
            y = model(x)
            torch.testing.assert_close(y, ref_model(x), **F32)
        torch.testing.assert_close(y, _reference(layers, x.flatten(1)).to(torch.float32), **F32)
    assert isinstance(model.__dict__["_plan"].plan, Engine)


def test_sparse_mlp_engine_is_rebuilt_when_values_or_bias_change():
    g = torch.Generator().manual_seed(fresh_seed())
    layers, model = _mlp(g)
    x = torch.randn(3, 784, generator=g)
    with torch.no_grad():
        model(x)
        first = model.__dict__["_plan"].plan
        model.layers["fc1"].values.mul_(0.5)
        model.layers["fc3"].bias.add_(1.0)
        y = model(x)
    assert model.__dict__["_plan"].plan is not first
    layers[0][0].values.mul_(0.5)
    layers[2][1].add_(1.0)
    torch.testing.assert_close(y, _reference(layers, x).to(torch.float32), **F32)


def test_sparse_mlp_input_errors_survive_the_cached_plan():
    g = torch.Generator().manual_seed(fresh_seed())
    _, model = _mlp(g)
    with torch.no_grad():
        model(torch.randn(2, 784))
        with pytest.raises(ValueError, match="in_features=784"):
            model(torch.randn(2, 783))
        with pytest.raises(TypeError, match="dtype"):
            model(torch.randn(2, 784, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_sparse_mlp_other_dtypes_match_reference(dtype):
    g = torch.Generator().manual_seed(fresh_seed())
    layers, model = _mlp(g, dtype)
    x = torch.randn(4, 784, generator=g).to(dtype)
    with torch.no_grad():
        y = model(x)
    assert y.dtype == dtype
    plan = model.__dict__["_plan"].plan
    assert isinstance(plan, Engine) == (dtype != torch.float64)  # fp64 stays in fp64 kernels
    rounded = [(CSRMatrix(c.indptr, c.indices, c.values.to(dtype), c.shape), b.to(dtype))
               for c, b in layers]
    torch.testing.assert_close(y, _reference(rounded, x).to(dtype), **TOL[dtype])


def test_load_ticket_model_uses_the_engine_and_matches_reference(tmp_path):
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("lenet", g, torch.uint16)
    path = tmp_path / "t.safetensors"
    save_ticket(path, [(f"fc{i + 1}", c, b) for i, (c, b) in enumerate(layers)])
    model = load_ticket(path)
    ref_model = load_ticket(path, backend="reference")
    x = torch.randn(7, 784, generator=g)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(y, ref_model(x), **F32)
    torch.testing.assert_close(y, _reference(layers, x).to(torch.float32), **F32)
    assert isinstance(model.__dict__["_plan"].plan, Engine)


def _chain(layers):
    return [ChainLayer(c.indptr, c.indices, c.values, b, i < len(layers) - 1, c.n_rows, c.n_cols)
            for i, (c, b) in enumerate(layers)]


def test_cpu_backend_chain_hook_returns_the_engine():
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net("five_layers", g)
    x = torch.randn(6, 70, generator=g)
    run = ops.prepare_chain(_chain(layers), x.device, x.dtype, "cpu")
    assert isinstance(run, Engine)
    torch.testing.assert_close(run(x), _reference(layers, x).to(torch.float32), **F32)
    assert not isinstance(ops.prepare_chain(_chain(layers), x.device, torch.float64, "cpu"),
                          Engine)


def test_engine_errors_are_csr_errors():
    C = engine_mod._ext.extension()
    assert C is not None
    csr = CSRMatrix(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([5], dtype=torch.int32),
                    torch.ones(1), (1, 6))
    chain = [ChainLayer(csr.indptr, csr.indices, csr.values, None, False, 1, 3)]  # 5 >= n_in
    with pytest.raises(CSRError, match="outside"):
        Engine.from_chain(chain)


def test_sparse_mlp_engine_follows_conversions_and_replaced_parameters():
    g = torch.Generator().manual_seed(fresh_seed())
    layers, model = _mlp(g)
    x = torch.randn(2, 784, generator=g)
    with torch.no_grad():
        model(x)
        model.half().float()  # swaps every parameter's .data (no version change): values rounded
        rounded = [(CSRMatrix(c.indptr, c.indices, c.values.half().float(), c.shape),
                    b.half().float()) for c, b in layers]
        torch.testing.assert_close(model(x), _reference(rounded, x).to(torch.float32), **F32)
        fc2 = model.layers["fc2"]
        fc2.values = torch.nn.Parameter(torch.zeros_like(fc2.values))  # replaced, not modified
        rounded[1] = (CSRMatrix(rounded[1][0].indptr, rounded[1][0].indices,
                                torch.zeros_like(rounded[1][0].values), rounded[1][0].shape),
                      rounded[1][1])
        torch.testing.assert_close(model(x), _reference(rounded, x).to(torch.float32), **F32)


@pytest.mark.parametrize("kind", NETS)
def test_batch_one_skips_zero_and_background_inputs_exactly(kind):
    """Batch 1 takes the scatter path when most inputs are 0 (ReLU outputs) or equal x[0] (a
    constant background, e.g. standardised MNIST); NaN and inf inputs still propagate."""
    g = torch.Generator().manual_seed(fresh_seed())
    layers = _net(kind, g)
    eng = Engine(layers)
    n_in = layers[0][0].n_cols
    fg = torch.rand(1, n_in, generator=g) < 0.2
    cases = {"zeros": torch.randn(1, n_in, generator=g) * fg,
             "background": torch.where(fg, torch.randn(1, n_in, generator=g), -0.4242),
             "constant": torch.full((1, n_in), 0.7)}
    nan = cases["background"].clone()
    nan[0, -1] = float("nan")
    inf = cases["background"].clone()
    inf[0, n_in // 2] = float("inf")
    cases.update(nan=nan, inf=inf)
    for name, x in cases.items():
        x = x.contiguous()
        if name in ("nan", "inf"):
            # Sparse semantics: a NaN/inf input reaches only the rows that store its column
            # (the dense reference spreads it through 0 * NaN); the oracle is the batch-2
            # gather kernel, which has no skipping.
            pair = torch.full((2, eng.n_out), float("nan"))
            eng.forward_into(x.expand(2, n_in).contiguous(), pair, path="gather", threads=1)
            want = pair[:1]
        else:
            want = _reference(layers, x).to(torch.float32)
        out = torch.full((1, eng.n_out), float("nan"))
        eng.forward_into(x, out, threads=1)
        torch.testing.assert_close(out, want, **F32, equal_nan=True, msg=lambda m: f"{name}: {m}")


def test_sparse_mlp_inference_sees_fused_optimizer_steps():
    """Fused Adam updates parameters in place without bumping their version counters, so the
    cached (owning) engine must not outlive a training forward: the plan is dropped and rebuilt,
    as sparse training's evaluations between steps rely on."""
    g = torch.Generator().manual_seed(fresh_seed())
    _, model = _mlp(g)
    x = torch.randn(1, 784, generator=g) * (torch.rand(1, 784, generator=g) < 0.2)
    with torch.no_grad():
        model(x)
    try:
        opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    except (RuntimeError, TypeError):
        pytest.skip("this torch has no fused CPU Adam")
    model(torch.randn(8, 784, generator=g)).square().sum().backward()
    opt.step()
    assert "_plan" not in model.__dict__  # the training forward dropped it
    ref_model = copy.deepcopy(model).set_backend("reference")
    for batch_x in (x, torch.randn(5, 784, generator=g)):
        with torch.no_grad():
            torch.testing.assert_close(model(batch_x), ref_model(batch_x), **F32)


def test_sparse_mlp_inference_plan_owns_its_arrays():
    """SparseMLP's cached engine copies the arrays (so its batch-1 path can skip zero inputs)
    and sees an in-place edit through the version counter, by rebuilding."""
    g = torch.Generator().manual_seed(fresh_seed())
    _, model = _mlp(g)
    x = torch.randn(1, 784, generator=g) * (torch.rand(1, 784, generator=g) < 0.2)
    with torch.no_grad():
        model(x)
        plan = model.__dict__["_plan"].plan
        assert getattr(plan, "copies", True), "the inference engine should own its arrays"
        next(iter(model.layers.values())).values.mul_(2.0)  # bumps the version counter
        ref = copy.deepcopy(model).set_backend("reference")
        torch.testing.assert_close(model(x), ref(x), **F32)
        assert model.__dict__["_plan"].plan is not plan
