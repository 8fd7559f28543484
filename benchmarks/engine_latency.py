"""Latency of a LeNet-300-100 ticket: the native whole-network engine vs dense and per-layer paths.

Random tickets of the LTH shape (fc1, fc2 pruned 20% per round, fc3 10%: 10 rounds = 10.7% of
fc1/fc2 remaining, 15 rounds = 3.5%), uint16 indices, fp32. Providers, timed side by side in
one process (rounds interleave the providers, so drift hits all of them alike; medians):

  torch dense    nn.Linear/ReLU with the mask baked into the weights (torch.no_grad)
  ort dense      ONNX Runtime on the same dense graph (only if onnxruntime and onnx import)
  per-layer      the cpu backend's previous chain (one _C.spmm call per layer, _Chain)
  SparseMLP      model(x) under torch.no_grad(): what a load_ticket model runs (the engine)
  engine raw     _C.SparseMLPEngine.forward_ptr into a preallocated output (no torch at all)
  engine 1T/team at batch 1: one thread vs the team forced on (the threading crossover)

    python benchmarks/engine_latency.py [--threads 2] [--batches 1 4 16 64 256 1000 10000]
                                        [--input randn|mnist]

This is a quick look; the official comparison is `lth-sparse bench --ticket`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from lth_sparse import _ext
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.kernels import cpu as cpu_backend
from lth_sparse.sparse.kernels.base import ChainLayer
from lth_sparse.sparse.nn import SparseMLP

SIZES = (784, 300, 100, 10)
RATES = (0.2, 0.2, 0.1)  # per-round pruning rate of fc1, fc2, fc3 (Frankle & Carbin)


def ticket(rounds: int, seed: int = 0):
    """[(name, CSRMatrix, bias)] of a random LeNet ticket after `rounds` pruning rounds, and the
    dense masked weights [(W, b)]."""
    g = torch.Generator().manual_seed(seed)
    layers, dense = [], []
    for i, rate in enumerate(RATES):
        n_in, n_out = SIZES[i], SIZES[i + 1]
        keep = int(round(n_in * n_out * (1 - rate) ** rounds))
        mask = torch.zeros(n_in * n_out)
        mask[torch.randperm(n_in * n_out, generator=g)[:keep]] = 1
        w = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5 * mask.view(n_out, n_in)
        b = torch.randn(n_out, generator=g) * 0.1
        layers.append((f"fc{i + 1}", CSRMatrix.from_dense(w, mask.view(n_out, n_in).bool()), b))
        dense.append((w, b))
    return layers, dense


def torch_dense(dense):
    mods = []
    for i, (w, b) in enumerate(dense):
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        mods += [lin] + ([nn.ReLU()] if i < len(dense) - 1 else [])
    model = nn.Sequential(*mods).eval()
    return lambda x: model(x)


def ort_dense(dense, threads: int):
    """An ONNX Runtime session over the dense graph (MatMul + Add + Relu), or None."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    nodes, inits, h = [], [], "x"
    for i, (w, b) in enumerate(dense):
        inits += [numpy_helper.from_array(w.t().contiguous().numpy(), f"w{i}"),
                  numpy_helper.from_array(b.numpy(), f"b{i}")]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        h = f"a{i}"
        if i < len(dense) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
            h = f"r{i}"
    graph = helper.make_graph(
        nodes, "lenet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", SIZES[0]])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["B", SIZES[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    out_name = h
    return lambda x: sess.run([out_name], {"x": x.numpy()})[0]


def time_us(fn, x, budget_s: float) -> list[float]:
    """Per-call times (us) of fn(x) for about budget_s seconds (at least 5 calls)."""
    fn(x)
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < 5 or time.perf_counter() < t_end:
        t0 = time.perf_counter_ns()
        fn(x)
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1000, 10000])
    ap.add_argument("--rounds", type=int, nargs="+", default=[10, 15],
                    help="pruning rounds of the tickets (10: 10.7%%, 15: 3.5%% of fc1/fc2)")
    ap.add_argument("--budget", type=float, default=0.15,
                    help="seconds per provider per batch per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--input", choices=("randn", "mnist"), default="randn",
                    help="randn: N(0, 1) inputs; mnist: standardised MNIST test images (the "
                         "engine skips their constant background at batch 1); needs "
                         "LTH_SPARSE_DATA or --data-dir")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)
    images = None
    if args.input == "mnist":
        from lth_sparse.lottery.data import load_dataset
        images = load_dataset("mnist", args.data_dir, download=False).test.images

    ext = _ext.extension()
    if ext is None or not hasattr(ext, "SparseMLPEngine"):
        raise SystemExit(f"the native engine is unavailable: {_ext.unavailable_reason()}")
    torch.set_num_threads(args.threads)
    ext.set_num_threads(args.threads)
    print(f"threads={args.threads}, input={args.input}; medians in us; x/ORT and x/torch = "
          "speed-up of SparseMLP")

    for rounds in args.rounds:
        layers, dense = ticket(rounds)
        model = SparseMLP.from_csr_layers(layers)
        nnz = model.nnz
        chain = [ChainLayer(l.indptr, l.indices, l.values.detach(), l.bias.detach(), l.relu,
                            l.out_features, l.in_features) for l in model.layers.values()]
        per_layer = cpu_backend._Chain(chain)
        with torch.no_grad():
            model(torch.zeros(1, SIZES[0]))
        engine = model.__dict__["_plan"].plan.native
        team = ext.SparseMLPEngine([(l.indptr.numpy(), l.indices.numpy(),
                                     l.values.detach().numpy(), l.bias.detach().numpy(),
                                     l.in_features, l.relu) for l in model.layers.values()])
        team.parallel_min_work = 0
        providers = {"torch dense": torch_dense(dense)}
        ort = ort_dense(dense, args.threads)
        if ort is not None:
            providers["ort dense"] = ort
        providers["per-layer"] = per_layer
        providers["SparseMLP"] = model

        print(f"\n### ticket: {rounds} rounds, {100 * nnz / sum(a * b for a, b in zip(SIZES, SIZES[1:])):.1f}% "
              f"remaining, nnz={nnz}")
        cols = list(providers) + ["engine raw", "x/ORT", "x/torch"]
        print("| batch | " + " | ".join(cols) + " |")
        print("|---:|" + "---:|" * len(cols))
        for batch in args.batches:
            if images is None:
                x = torch.randn(batch, SIZES[0])
            else:
                x = images[torch.arange(batch) % images.shape[0]].contiguous()
            out = torch.empty(batch, SIZES[-1])
            raw = (lambda xx, o=out: engine.forward_ptr(xx.data_ptr(), xx.shape[0], o.data_ptr()))
            fns = dict(providers, **{"engine raw": raw})
            if batch == 1:
                fns["engine 1T"] = lambda xx, o=out: engine.forward(xx.numpy(), o.numpy(), 1)
                fns["engine team"] = lambda xx, o=out: team.forward(xx.numpy(), o.numpy(),
                                                                    args.threads)
            budget = args.budget * (1 + batch / 1000)
            samples = {k: [] for k in fns}
            with torch.no_grad():
                for _ in range(args.repeats):
                    for k, fn in fns.items():
                        samples[k] += time_us(fn, x, budget)
            med = {k: statistics.median(v) for k, v in samples.items()}
            row = [f"{med[k]:.1f}" for k in list(providers) + ["engine raw"]]
            row.append(f"{med['ort dense'] / med['SparseMLP']:.2f}x" if "ort dense" in med else "-")
            row.append(f"{med['torch dense'] / med['SparseMLP']:.2f}x")
            print(f"| {batch} | " + " | ".join(row) + " |")
            if batch == 1:
                print(f"|  | batch 1 engine: 1 thread {med['engine 1T']:.1f} us, team of "
                      f"{args.threads} {med['engine team']:.1f} us |")


if __name__ == "__main__":
    main()
