"""`lth-sparse demo`: the whole loop in a few minutes on 2 cores.

Find a LeNet-300-100 ticket on MNIST (short schedule, 4 rounds to 90% sparsity, with the random
re-initialisation control), export it as a CSR ticket file, load it back without the run, check
it computes what the dense masked model computes, and compare speed and accuracy against the
dense model with the mask baked in (plain nn.Linear layers holding zeros, no prune hooks: what
one would deploy without this package; timing the prune-hook model would add its per-call
weight * mask product and flatter the sparse model).
"""
from __future__ import annotations

import torch

from lth_sparse.bench.timing import time_cpu
from lth_sparse.bridge.convert import dense_mlp_from_sparse
from lth_sparse.bridge.export import export_run
from lth_sparse.lottery.config import ExperimentConfig
from lth_sparse.lottery.data import load_data_for
from lth_sparse.lottery.models import build_model
from lth_sparse.lottery.pruning import load_params, set_masks
from lth_sparse.lottery.report import markdown_table, round_table
from lth_sparse.bridge.trainers import find_ticket
from lth_sparse.sparse.ticket_file import load_ticket
from lth_sparse.sparse.tolerances import tolerance

DENSE_LABEL = "dense, mask baked in (nn.Linear with zeros)"
SPARSE_LABEL = "sparse (lth_sparse)"


def demo_config(data_dir: str | None, iterations: int) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.data.data_dir = data_dir
    cfg.train.iterations = iterations
    cfg.train.eval_every = max(1, iterations // 6)
    cfg.prune.target_sparsity = 0.9
    cfg.lottery.rounds = 4
    cfg.lottery.controls = ("reinit",)
    return cfg.validate()


def run_demo(runs_dir=None, data_dir=None, iterations: int = 1500) -> int:
    cfg = demo_config(data_dir, iterations)
    print(f"[1/3] finding a ticket: LeNet-300-100, {cfg.lottery.rounds} rounds to "
          f"{100 * cfg.prune.target_sparsity:.0f}% sparsity, {iterations} iterations per round, "
          "random re-init control")
    data = load_data_for(cfg)
    run = find_ticket(cfg, runs_dir, data=data)
    print(round_table(run.all_metrics()))

    ticket_path = run.path / "ticket.safetensors"
    export_run(run.path, ticket_path)
    r = run.completed_rounds()[-1]
    print(f"\n[2/3] exported round {r} to {ticket_path} ({ticket_path.stat().st_size / 1e3:.0f} kB)")

    sparse = load_ticket(ticket_path).eval()
    # the pipeline's own pruned model (prune hooks): the independent check of the round trip
    pruned = build_model(cfg)
    state = run.read_round_state(r)
    set_masks(pruned, state["masks"])
    load_params(pruned, state["early_stop"])
    pruned.eval()
    x, y = data.test.images, data.test.labels
    with torch.no_grad():
        ls, ld = sparse(x), pruned(x)
    max_diff = (ls - ld).abs().max().item()
    same = bool((ls.argmax(1) == ld.argmax(1)).all())
    print(f"      loaded back: max |logit difference| vs the pruned model {max_diff:.2e}, "
          f"identical predictions: {same}")

    dense = dense_mlp_from_sparse(sparse).eval()  # plain nn.Linear stack, zeros where pruned
    print(f"\n[3/3] sparse ticket vs the dense model with its mask baked in, on CPU "
          f"({torch.get_num_threads()} threads, median latency)")
    rows = []
    timings = {}
    for name, model in ((DENSE_LABEL, dense), (SPARSE_LABEL, sparse)):
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
            lat = {b: time_cpu(lambda m=model, xb=x[:b]: m(xb), budget_s=0.5)["median_ms"]
                   for b in (1, 256)}
        timings[name] = lat
        rows.append([name, f"{100 * acc:.2f}", f"{lat[1]:.3f}", f"{lat[256]:.3f}"])
    d, s = timings[DENSE_LABEL], timings[SPARSE_LABEL]
    rows.append(["speedup", "", f"{d[1] / s[1]:.2f}x", f"{d[256] / s[256]:.2f}x"])
    print(markdown_table(["model", "test acc %", "batch 1 ms", "batch 256 ms"], rows))
    print(f"\nrun: {run.path}   ticket: {ticket_path}\n"
          f"next: lth-sparse show {run.run_id} --plot tickets.png | lth-sparse bench --ticket "
          f"{ticket_path} | lth-sparse train-ticket {run.run_id} --backend cpu")
    close = torch.allclose(ls, ld, **tolerance(torch.float32).as_kwargs())
    return 0 if same and close else 1
