"""MNIST (and Fashion-MNIST) loaded once into memory as tensors; batches by indexing.

No DataLoader and no per-sample PIL transforms: the whole split lives in one float32 tensor and a
batch is `images[idx]`, which is what makes a training iteration take about a millisecond.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lth_sparse.errors import DataError

if TYPE_CHECKING:
    from lth_sparse.lottery.config import ExperimentConfig

DATA_ENV = "LTH_SPARSE_DATA"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "lth_sparse" / "data"
# (mean, std) of the training pixels in [0, 1]
STATS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


@dataclass
class Split:
    """images (N, 784) float32 on `device`, labels (N,) int64."""
    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.numel()

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    name: str

    def to(self, device) -> "Dataset":
        return Dataset(self.train.to(device), self.val.to(device), self.test.to(device), self.name)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The explicit folder, else $LTH_SPARSE_DATA, else ~/.cache/lth_sparse/data."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return DEFAULT_DATA_DIR


def _torchvision_split(name: str, root: Path, train: bool, download: bool):
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    raw_files = root / _FOLDERS[name] / "raw"
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        pass  # files missing: try the ordinary download next
    except (ValueError, EOFError, OSError) as exc:  # present but truncated or corrupt
        raise DataError(f"{name} files in {raw_files} could not be read ({type(exc).__name__}: "
                        f"{exc}); replace them with intact copies (or delete them to download "
                        "again)") from None
    raw = root / _FOLDERS[name] / "raw"
    fix = (f"Put the four IDX files (train-images-idx3-ubyte, ...) in {raw}, or point "
           f"--data-dir / ${DATA_ENV} at the folder that holds {_FOLDERS[name]}/raw/.")
    if not download:
        raise DataError(f"{name} not found in {raw} (downloading is off). {fix}")
    try:
        return cls(str(root), train=train, download=True)
    except Exception as exc:  # offline, or a broken partial download
        raise DataError(f"{name} not found in {raw} and downloading it failed "
                        f"({type(exc).__name__}: {exc}). {fix}") from None


def load_dataset(name: str = "mnist", data_dir=None, *, val_size: int = 5000, split_seed: int = 0,
                 normalize: bool = True, download: bool = True,
                 device: str | torch.device = "cpu") -> Dataset:
    """Load a dataset once into memory: train/val (seeded split of the 60K) and the official test.

    Missing files are downloaded when `download` (the ordinary torchvision way); offline that
    fails with a DataError saying where it looked and how to fix it.
    Returns float32 images flattened to (N, 784) (standardised when `normalize`) and int64 labels.
    """
    if name not in _FOLDERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(_FOLDERS)}")
    root = resolve_data_dir(data_dir)
    full_train = _torchvision_split(name, root, True, download)
    test = _torchvision_split(name, root, False, download)
    if not 0 < val_size < len(full_train):
        raise DataError(f"val_size must be in (0, {len(full_train)}), got {val_size}")

    def tensors(ds) -> Split:
        x = ds.data.reshape(len(ds.data), -1).to(torch.float32).div_(255.0)
        if normalize:
            mean, std = STATS[name]
            x = x.sub_(mean).div_(std)
        return Split(x, ds.targets.to(torch.int64))

    train_all = tensors(full_train)
    perm = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(split_seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    ds = Dataset(
        train=Split(train_all.images[train_idx], train_all.labels[train_idx]),
        val=Split(train_all.images[val_idx], train_all.labels[val_idx]),
        test=tensors(test),
        name=name,
    )
    return ds.to(device)


def load_data_for(cfg: "ExperimentConfig", device="cpu") -> Dataset:
    """The experiment's dataset, split and preprocessed as its DataConfig says."""
    d = cfg.data
    return load_dataset(d.dataset, d.data_dir, val_size=d.val_size, split_seed=d.split_seed,
                        normalize=d.normalize, device=device)


def load_mnist(data_dir=None, **kw) -> Dataset:
    """`load_dataset("mnist", data_dir, ...)`."""
    return load_dataset("mnist", data_dir, **kw)


class BatchSampler:
    """Endless seeded minibatch indices: a fresh permutation each epoch, no sample dropped twice.

    The state is (epoch, position) so a resumed run can rebuild the exact same order.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device="cpu"):
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).to(self.device)

    def seek(self, batches: int) -> "BatchSampler":
        """Position the sampler as if `batches` batches had been drawn (O(1), no replay), so a
        run resumed or rewound to iteration k continues the data order at batch k + 1."""
        if batches < 0:
            raise ValueError(f"cannot seek to a negative batch count ({batches})")
        per_epoch = self.n // self.batch_size
        if per_epoch == 0:
            raise ValueError(f"batch size {self.batch_size} exceeds the {self.n} samples")
        self.epoch, done = divmod(batches, per_epoch)
        self.pos = done * self.batch_size
        self._perm = self._permutation(self.epoch)
        return self

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:  # drop the ragged tail: every batch is full
            self.epoch += 1
            self.pos = 0
            self._perm = self._permutation(self.epoch)
        idx = self._perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx
