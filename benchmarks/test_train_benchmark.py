"""One training step (forward + backward + Adam): dense masked MLP vs SparseMLP.

Correctness first: the sparse model's logits must match the dense masked model's.
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import synced

from lth_sparse.bench.checks import rel_error
from lth_sparse.bench.config import parse_model
from lth_sparse.bench.grids import make_masked_mlp
from lth_sparse.bridge.convert import sparse_mlp_from_mlp
from lth_sparse.sparse.tolerances import relative_error_bound

MODELS = ["784-300-100-10", "784-4096-4096-10"]


@pytest.mark.parametrize("batch", [256])
@pytest.mark.parametrize("sparsity", [0.9, 0.98])
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("provider", ["dense-masked", "sparse"])
def test_train_step(benchmark, device, provider, model, sparsity, batch):
    sizes = parse_model(model)
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, sizes[0], generator=g).to(device)
    y = torch.randint(0, sizes[-1], (batch,), generator=g).to(device)
    net = make_masked_mlp(sizes, sparsity).to(device)
    if provider == "sparse":
        backend = "triton" if device == "cuda" else "cpu"
        try:
            sparse = sparse_mlp_from_mlp(net, backend=backend).to(device)
        except Exception as exc:  # SparseMLP or the backend is not available here
            pytest.skip(f"{type(exc).__name__}: {exc}")
        with torch.no_grad():
            err = rel_error(sparse(x), net.to(device)(x).double())
        tol = relative_error_bound("fp32", depth=len(sizes) - 1)
        assert err <= tol, f"sparse logits differ from the dense masked model by {err:.3g}"
        net = sparse
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    benchmark.group = f"train {model} sparsity {sparsity} batch {batch}"
    benchmark.extra_info.update(provider=provider)
    benchmark(synced(step, device))
