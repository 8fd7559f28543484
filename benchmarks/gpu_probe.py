"""Two small GPU-check helpers for benchmarks/gpu_check.sh (torch only; no bench internals).

    python benchmarks/gpu_probe.py copy-bandwidth --out copy_bandwidth.json [--gib 2]
        The memory ceiling: median time of one large device-to-device copy (do_bench, CUDA
        events), reported as bytes read + bytes written per second. Random data, never zeros.
    python benchmarks/gpu_probe.py make-ticket --out lenet.safetensors [--sparsity 0.9]
        A LeNet-300-100 ticket file with random weights and random masks (no MNIST, no
        training): what `lth-sparse bench --ticket` needs to time a ticket end to end.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

LENET_SIZES = (784, 300, 100, 10)


def copy_bandwidth(gib: float = 2.0) -> dict:
    """Device-to-device copy of `gib` GiB of fp32: {gbps, bytes_moved, median_ms, ...}.

    bytes_moved counts the source read and the destination write (2x the buffer), the way the
    spmm bandwidth target counts a kernel's bytes. Needs CUDA.
    """
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("copy-bandwidth: no CUDA GPU is visible")
    n = int(gib * (1 << 30)) // 4
    src = torch.empty(n, dtype=torch.float32, device="cuda").uniform_(-1.0, 1.0)
    dst = torch.empty_like(src)
    try:
        from triton.testing import do_bench
        samples = do_bench(lambda: dst.copy_(src), warmup=25, rep=300, return_mode="all")
        timer = "triton.testing.do_bench"
    except ImportError:  # CUDA events by hand
        for _ in range(3):
            dst.copy_(src)
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(50)]
        for start, end in events:
            start.record()
            dst.copy_(src)
            end.record()
        torch.cuda.synchronize()
        samples = [s.elapsed_time(e) for s, e in events]
        timer = "cuda-events"
    if not torch.equal(dst[:1024], src[:1024]) or not torch.equal(dst[-1024:], src[-1024:]):
        raise SystemExit("copy-bandwidth: the copy did not copy")
    samples = sorted(samples)
    median_ms = samples[len(samples) // 2]
    moved = 2 * n * 4
    return dict(gbps=moved / (median_ms * 1e-3) / 1e9, bytes_moved=moved, buffer_bytes=n * 4,
                median_ms=median_ms, samples=len(samples), timer=timer,
                gpu=torch.cuda.get_device_name())


def make_ticket(path: Path, sparsity: float = 0.9, seed: int = 0) -> dict:
    """Write a random LeNet-300-100 ticket (every layer at `sparsity`); returns its metadata."""
    import torch

    from lth_sparse import CSRMatrix, save_ticket

    if not 0.0 <= sparsity < 1.0:
        raise SystemExit(f"make-ticket: --sparsity must be in [0, 1), got {sparsity}")
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(LENET_SIZES[:-1], LENET_SIZES[1:]), start=1):
        weight = torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in)
        mask = torch.rand(n_out, n_in, generator=g) >= sparsity
        bias = torch.randn(n_out, generator=g) * 0.1
        layers.append((f"fc{i}", CSRMatrix.from_dense(weight, mask, name=f"fc{i}"), bias))
    return save_ticket(path, layers, metadata={
        "source": "benchmarks/gpu_probe.py make-ticket: random weights and masks, untrained",
        "sparsity": sparsity, "seed": seed})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_probe.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("copy-bandwidth", help="measure the device-to-device copy bandwidth")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--gib", type=float, default=2.0, help="buffer size in GiB (default 2)")
    p = sub.add_parser("make-ticket", help="write a random pruned LeNet-300-100 ticket file")
    p.add_argument("--out", type=Path, required=True, help="ticket file (.safetensors)")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "copy-bandwidth":
        result = copy_bandwidth(args.gib)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"copy bandwidth: {result['gbps']:.0f} GB/s (read + write, "
              f"{result['buffer_bytes'] / 2**30:.1f} GiB buffer, median {result['median_ms']:.3f} "
              f"ms over {result['samples']} copies)")
    else:
        doc = make_ticket(args.out, args.sparsity, args.seed)
        print(f"ticket {args.out}: sizes {list(LENET_SIZES)}, sparsity "
              f"{doc['totals']['sparsity']:.4f}, nnz {doc['totals']['nnz']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
