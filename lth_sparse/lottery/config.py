"""Experiment hyperparameters: dataclasses with defaults and one-line help (open_lth style).

An experiment's semantic content hashes to its run directory, so the same experiment always lands
in the same place and re-running it resumes. Fields that do not change results (where the data
lives, the progress bar) are excluded from the hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lth_sparse.errors import ConfigError

PRUNE_METHODS = ("layerwise", "global", "random")
CONTROLS = ("reinit", "random_prune", "finetune")
DATASETS = ("mnist", "fashion_mnist")
TRAIN_BACKENDS = ("auto", "dense", "sparse")


def _help(text: str, flag: str | None = None, **kw) -> Any:
    """A field with one-line help; `flag` names its CLI option when the field name alone would
    be ambiguous (default: --<name>)."""
    meta = {"help": text}
    if flag:
        meta["flag"] = flag
    return field(metadata=meta, **kw)


@dataclass
class DataConfig:
    dataset: str = _help("dataset: mnist or fashion_mnist", default="mnist")
    data_dir: str | None = _help(
        "folder holding MNIST/raw (torchvision layout); default $LTH_SPARSE_DATA or "
        "~/.cache/lth_sparse/data (downloaded there when missing)", default=None)
    val_size: int = _help("training images held out for validation (early stopping)", default=5000)
    split_seed: int = _help("seed of the train/validation split", default=0)
    normalize: bool = _help("standardise pixels with the dataset mean/std", default=True)


@dataclass
class ModelConfig:
    hidden: tuple[int, ...] = _help("hidden layer sizes, e.g. 300,100 (LeNet-300-100)",
                                    default=(300, 100))
    init: str = _help("init scheme: glorot_normal (paper), glorot_uniform, kaiming_normal, "
                      "kaiming_uniform, orthogonal, pytorch_default, signed_constant "
                      "(+-sqrt(2/fan_in), random signs)", default="glorot_normal")


@dataclass
class PruneConfig:
    method: str = _help("layerwise (l1_unstructured per layer), global (global_unstructured) or "
                        "random (random_unstructured control)", default="layerwise")
    rate: float = _help("fraction of surviving hidden-layer weights pruned per round", default=0.2)
    output_rate: float = _help("fraction of surviving output-layer weights pruned per round",
                               default=0.1)
    layer_rates: dict[str, float] = _help(
        "per-layer overrides of the per-round rate, e.g. fc1=0.3,fc3=0.05", default_factory=dict)
    target_sparsity: float | None = _help(
        "reach this final sparsity of the hidden layers in `rounds` rounds: per-round rate "
        "q = 1-(1-p)^(1/rounds), the output layer at half of it, q/2, as the paper's 20%/10% "
        "(overrides rate/output_rate; layer_rates still override it)", default=None)
    prune_bias: bool = _help("prune biases too (off in the paper)", default=False)


@dataclass
class TrainConfig:
    iterations: int = _help("training iterations per round (paper: 50000)", default=50000)
    batch_size: int = _help("minibatch size (paper: 60)", default=60)
    lr: float = _help("Adam learning rate (paper: 1.2e-3)", default=1.2e-3)
    eval_every: int = _help("evaluate validation and test every N iterations", default=500)
    seed: int = _help("seed of initialisation and data order", default=0)
    backend: str = _help(
        "who runs the training steps of a round: dense (torch, masked weights), sparse (the fused "
        "native sparse trainer, CPU) or auto (sparse when this machine's measured break-even "
        "density for the network is above the round's density)", default="auto",
        flag="train-backend")


@dataclass
class LotteryConfig:
    rounds: int = _help("pruning rounds after the dense round (one-shot = 1)", default=15)
    rewind_iteration: int = _help("rewind survivors to their values at this iteration "
                                  "(0 = original lottery ticket, >0 = late rewinding)", default=0)
    controls: tuple[str, ...] = _help("controls run beside each round on the same masks: "
                                      "reinit, random_prune, finetune", default=("reinit",))


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lottery: LotteryConfig = field(default_factory=LotteryConfig)

    SECTIONS = ("data", "model", "prune", "train", "lottery")
    # Not part of an experiment's identity: where the data lives does not change results, and
    # neither does who runs the training steps: the dense and the sparse trainer do the same
    # arithmetic (same minibatches, same Adam), differing only in fp32 summation order. Keeping
    # the backend out of the hash lets `auto` pick per machine and per round, and a run started
    # dense resume sparse, without forking the run; each round records its backend instead.
    NON_SEMANTIC = {("data", "data_dir"), ("train", "backend")}

    # ------------------------------------------------------------------ validation
    def validate(self) -> "ExperimentConfig":
        """Raise ConfigError naming the first invalid field and its allowed values.

        Every field is first coerced to its declared type (0 -> 0.0 for a float, a list -> a
        tuple), so a config built in Python hashes like the same one read from the CLI or a file.
        """
        for section in self.SECTIONS:
            obj = getattr(self, section)
            for f in fields(obj):
                set_field(obj, section, f.name, getattr(obj, f.name))
        d, m, p, t, lo = self.data, self.model, self.prune, self.train, self.lottery
        _choice("data.dataset", d.dataset, DATASETS)
        _int_range("data.val_size", d.val_size, 1, 59_999)
        _choice("model.init", m.init, ("glorot_normal", "glorot_uniform", "kaiming_normal",
                                       "kaiming_uniform", "orthogonal", "pytorch_default",
                                       "signed_constant"))
        if not m.hidden or any(not isinstance(h, int) or h <= 0 for h in m.hidden):
            raise ConfigError(f"model.hidden must be positive integers like 300,100, got {m.hidden!r}")
        _choice("prune.method", p.method, PRUNE_METHODS)
        _ratio("prune.rate", p.rate)
        _ratio("prune.output_rate", p.output_rate)
        names = set(layer_names(len(m.hidden) + 1))
        for name, rate in p.layer_rates.items():
            if name not in names:
                raise ConfigError(f"prune.layer_rates names unknown layer {name!r}; layers are "
                                  f"{', '.join(sorted(names))}")
            _ratio(f"prune.layer_rates[{name}]", rate)
        if p.target_sparsity is not None:
            _ratio("prune.target_sparsity", p.target_sparsity)
        _int_range("train.iterations", t.iterations, 1, 10**9)
        _int_range("train.batch_size", t.batch_size, 1, 60_000)
        _int_range("train.eval_every", t.eval_every, 1, 10**9)
        _choice("train.backend", t.backend, TRAIN_BACKENDS)
        if not (isinstance(t.lr, (int, float)) and math.isfinite(t.lr) and t.lr > 0):
            raise ConfigError(f"train.lr must be a positive number, got {t.lr!r}")
        _int_range("lottery.rounds", lo.rounds, 0, 100)
        # a rewound round trains iterations k+1..T, so k = T would leave nothing to train
        _int_range("lottery.rewind_iteration", lo.rewind_iteration, 0, t.iterations - 1)
        for c in lo.controls:
            _choice("lottery.controls", c, CONTROLS)
        return self

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return {s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}

    @classmethod
    def from_dict(cls, raw: dict) -> "ExperimentConfig":
        """Build from a nested dict ({"train": {"iterations": ...}, ...}); unknown keys are errors."""
        if not isinstance(raw, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
        unknown = set(raw) - set(cls.SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; sections are "
                              f"{', '.join(cls.SECTIONS)}")
        cfg = cls()
        for section, values in raw.items():
            target = getattr(cfg, section)
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping")
            for key, value in values.items():
                set_field(target, section, key, value)
        return cfg

    def canonical_json(self) -> str:
        """The experiment's identity: sorted JSON without non-semantic fields."""
        d = self.to_dict()
        for section, key in self.NON_SEMANTIC:
            d[section].pop(key, None)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def run_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    # ------------------------------------------------------------------ derived schedule
    def per_round_rates(self) -> dict[str, float]:
        """Per-round pruning rate of each weight layer ("fc1".."fcN").

        With target_sparsity p over R rounds the hidden layers lose q = 1-(1-p)^(1/R) of their
        survivors per round and the output layer q/2 -- the same half rate the iterative schedule
        uses (20%/10%), one-shot (R = 1) included: hidden layers end at sparsity p, the output
        layer at 1-(1-q/2)^R (p/2 one-shot).
        """
        p = self.prune
        names = layer_names(len(self.model.hidden) + 1)
        if p.target_sparsity is not None:
            rounds = max(self.lottery.rounds, 1)
            q = 1.0 - (1.0 - p.target_sparsity) ** (1.0 / rounds)
            base = {n: q for n in names}
            base[names[-1]] = q / 2.0
        else:
            base = {n: p.rate for n in names}
            base[names[-1]] = p.output_rate
        base.update(p.layer_rates)
        return base


def derived_seed(seed: int, *parts) -> int:
    """A stable 31-bit seed for (seed, round, purpose): same inputs, same seed, on any machine."""
    key = ":".join(map(str, (seed, *parts))).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


def layer_names(n_layers: int) -> list[str]:
    return [f"fc{i + 1}" for i in range(n_layers)]


def load_config_file(path: str | Path) -> dict:
    """Read a nested config mapping from a .json or .toml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing .json or .toml file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            return tomllib.loads(text)
        return json.loads(text)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"config file {path} could not be parsed ({exc}); it must be JSON, or "
                          "TOML with a .toml suffix (Python 3.11+)") from None


# ---------------------------------------------------------------------- field helpers

def set_field(target, section: str, key: str, value) -> None:
    """Set `section.key` on a section dataclass, coercing strings from the CLI/config file."""
    by_name = {f.name: f for f in fields(target)}
    if key not in by_name:
        raise ConfigError(f"unknown option {section}.{key}; options of [{section}] are "
                          f"{', '.join(by_name)}")
    setattr(target, key, coerce(f"{section}.{key}", by_name[key].type, value))


def coerce(name: str, annotation: str, value):
    """Convert `value` (possibly a CLI string) to the annotated type, or raise ConfigError."""
    kind = str(annotation)
    try:
        if value is None:
            if "None" in kind:
                return None
            raise ValueError("null is not allowed")
        if kind.startswith("tuple[int"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(int(v) for v in items if str(v).strip() != "")
        if kind.startswith("tuple[str"):
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip() and v.strip() != "none")
            return tuple(str(v) for v in value)
        if kind.startswith("dict[str, float]"):
            if isinstance(value, str):
                pairs = [kv.split("=", 1) for kv in value.split(",") if kv.strip()]
                if any(len(p) != 2 for p in pairs):
                    raise ValueError("expected name=rate pairs")
                return {k.strip(): float(v) for k, v in pairs}
            return {str(k): float(v) for k, v in dict(value).items()}
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected an integer")
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("str"):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot use {value!r} ({exc}); expected {kind}") from None
    raise ConfigError(f"{name}: unsupported option type {kind}")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _ratio(name, value):
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ConfigError(f"{name} must be a fraction in [0, 1), got {value!r}")


def _int_range(name, value, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
