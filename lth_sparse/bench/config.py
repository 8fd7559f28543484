"""What one benchmark run measures: `BenchConfig`, its defaults, and the parsers of its flags."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from lth_sparse.errors import ConfigError

DEFAULT_SHAPES = "784x300,300x100,100x10,4096x4096"
DEFAULT_SPARSITIES = "0.5,0.8,0.9,0.95,0.98,0.99"
DEFAULT_BATCHES = {"cpu": "1,16,64,256", "cuda": "1,16,64,256,1024,4096"}
# the ticket comparison spans latency (batch 1) to throughput (a whole test set at once)
DEFAULT_TICKET_BATCHES = "1,4,16,64,256,1000,10000"
DEFAULT_DTYPES = {"cpu": "fp32", "cuda": "fp32,bf16"}
DEFAULT_TRAIN_MODELS = "784-300-100-10,784-4096-4096-10"
DEFAULT_TRAIN_SPARSITIES = {"cpu": "0.9,0.95,0.98", "cuda": "0.9,0.95,0.98"}
DEFAULT_TRAIN_BATCHES = "64,256"
# --quick: a tiny grid for tests and smoke runs (seconds)
QUICK = dict(shapes="96x80,100x10", sparsities="0.5,0.9", batches="1,8",
             ticket_batches="1,8", train_models="64-48-10", train_sparsities="0.9",
             train_batches="8")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# Weights bigger than this are timed with a cold cache on CPU by default (--cache auto): a
# 4096x4096 layer does not sit in cache between calls in a real network, but its 98%-sparse CSR
# would, which would flatter the sparse kernels.
COLD_CACHE_BYTES = 4 << 20

# Example values quoted by the parse errors, per flag.
FLAG_EXAMPLES = {"shapes": "784x300,4096x4096", "sparsities": "0.9,0.98", "batches": "1,64,256",
                 "dtype": "fp32,bf16", "train-models": "784-300-100-10",
                 "train-sparsities": "0.9", "train-batches": "256",
                 "providers": "dense,ours-cpu"}


@dataclass
class BenchConfig:
    """Everything one benchmark run needs (the CLI fills it from its flags)."""
    device: str = "cpu"
    providers: list[str] | None = None          # None: all available for the device
    shapes: list[tuple[int, int]] = field(default_factory=list)   # (in_features, out_features)
    sparsities: list[float] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    mode: str = "all"                            # inference | train | all
    train_models: list[list[int]] = field(default_factory=list)
    train_sparsities: list[float] = field(default_factory=list)
    train_batches: list[int] = field(default_factory=list)
    tickets: list[str] = field(default_factory=list)   # ticket files: the ticket comparison
    runtime: str | None = None                   # lth-sparse-run binary (None: search for it)
    data_dir: str | None = None
    quick: bool = False
    repeats: int | None = None                   # fixed number of timed samples per cell
    budget_s: float = 0.25                       # time budget per cell when repeats is None
    threads: int | None = None
    cache: str = "auto"                          # auto | hot | cold
    cuda_graphs: bool = True
    out_dir: str | None = None
    allow_dirty: bool = False                    # write into benchmarks/results/ from a dirty tree
    seed: int = 0
    plots: bool = True
    command: str = ""


def parse_list(text: str, convert: Callable, flag: str) -> list:
    """'a,b,c' -> [convert('a'), ...]; ConfigError naming --flag and an example when it fails."""
    try:
        items = [convert(t.strip()) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"could not parse --{flag} {text!r}; give a comma-separated list, "
                          f"e.g. --{flag} {FLAG_EXAMPLES[flag]}") from None
    if not items:
        raise ConfigError(f"--{flag} is empty; give e.g. --{flag} {FLAG_EXAMPLES[flag]}")
    return items


def parse_shape(text: str) -> tuple[int, int]:
    """'784x300' -> (784, 300): in_features x out_features (the weight is out x in)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(text)
    return int(m.group(1)), int(m.group(2))


def parse_model(text: str) -> list[int]:
    """'784-300-100-10' -> [784, 300, 100, 10] (input, hidden..., classes)."""
    try:
        sizes = [int(t) for t in text.split("-")]
    except ValueError:
        raise ValueError(text) from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(text)
    return sizes


def parse_sparsity(text: str) -> float:
    """'0.9' -> 0.9, a fraction of zero weights in [0, 1)."""
    s = float(text)
    if not 0.0 <= s < 1.0:
        raise ValueError(text)
    return s


def parse_positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def parse_dtype_name(text: str) -> str:
    """'float32' or 'fp32' -> 'fp32' (a key of DTYPES)."""
    t = text.lower().replace("float32", "fp32").replace("bfloat16", "bf16")
    t = t.replace("float16", "fp16").replace("float64", "fp64")
    if t not in DTYPES:
        raise ValueError(text)
    return t


def shape_label(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def model_label(sizes: Sequence[int]) -> str:
    return "-".join(str(s) for s in sizes)
