"""The ticket file: a sparse MLP's CSR layers + biases + metadata, deployable on its own.

A ticket file needs neither the training code nor the run directory: `load_ticket(path)` gives a
ready `SparseMLP`. Two formats, detected from the file's first bytes (never from its suffix):

safetensors (default)
    tensors `<name>.indptr`, `<name>.indices`, `<name>.values` and, when the layer has one,
    `<name>.bias`, stored with their own dtypes (uint16 indices and bfloat16 values included).
    The safetensors metadata (a dict[str, str]) holds one key, "lth_sparse", whose value is the
    JSON metadata document described below.

npz (numpy.savez, uncompressed; readable with numpy + scipy alone)
    per layer `<name>.data`, `<name>.indices`, `<name>.indptr`, `<name>.shape` (int64, 2) and
    `<name>.bias`, plus `__lth_sparse__`: a 0-d unicode array holding the same JSON document.
    bfloat16 values (numpy has no bfloat16) are stored as float32 (exact) and cast back on read.
    One layer as SciPy sees it:
        z = numpy.load(path)
        W = scipy.sparse.csr_matrix((z["fc1.data"], z["fc1.indices"], z["fc1.indptr"]),
                                    shape=tuple(z["fc1.shape"]))       # (out, in); y = x @ W.T + b

The JSON metadata document (format version 1):
    format           "lth_sparse.ticket"
    format_version   1
    container        "safetensors" or "npz"
    architecture     {"sizes": [in, hidden..., out], "activation": "relu"}
    layer_order      [names, input to output]
    layers           {name: {shape [out, in], nnz, density, sparsity, indptr_dtype, index_dtype,
                      value_dtype, has_bias, bias_dtype, tensors: {part: {key, dtype,
                      stored_dtype, shape, sha256}}}}  (part in indptr/indices/values/bias;
                      sha256 of the bytes as stored in the file)
    totals           {nnz, weights, density, sparsity}
    created_by       {package, version, torch, numpy, safetensors, python, time (UTC ISO 8601)}
    metadata         whatever the caller passed to save_ticket (source run, round, accuracy...)

Writes are atomic (temp file in the destination folder, fsync, os.replace): a failed or
interrupted save never leaves a half file and never clobbers an existing good one; files get
mode 0o666 minus the umask unless `mode=` restricts them.

Reads treat the file as hostile and check everything before returning anything: the file size
(before reading), the container headers (read bounded; safetensors tensors must tile the data
block exactly; npz members are judged from their zip headers' uncompressed sizes and their .npy
headers, compressed or not, before any data is inflated), the metadata against those headers
and the limits (TicketLimits / MAX_* below: nothing proportional to a claimed shape or count is
allocated before the claim is known to be backed by bytes and within limits), then checksums,
then the CSR invariants (CSRMatrix.validate, their one home). Free-form provenance
(created_by, metadata) is not checksummed. Every failure is a TicketFileError, or a CSRError
for a CSR invariant, naming the problem.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lth_sparse.errors import ConfigError, LthSparseError, TicketFileError
from lth_sparse.fileio import DEFAULT_MODE, atomic_write
from lth_sparse.sparse.csr import VALUE_DTYPES, CSRMatrix

FORMAT_NAME = "lth_sparse.ticket"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
METADATA_KEY = "lth_sparse"        # safetensors metadata key holding the JSON document
NPZ_METADATA_KEY = "__lth_sparse__"  # npz entry holding the JSON document
ACTIVATIONS = ("relu",)
FORMATS = ("safetensors", "npz")
# One rule for layer names, on save and on read: they become SparseMLP module names (torch
# forbids dots there) and tensor-key prefixes ("<name>.indptr"), so a Python identifier.
MAX_LAYER_NAME_CHARS = 64
_LAYER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PARTS = ("indptr", "indices", "values", "bias")
_NPZ_SUFFIX = {"indptr": "indptr", "indices": "indices", "values": "data", "bias": "bias"}

_DTYPE_NAMES = {
    torch.uint16: "uint16", torch.int32: "int32", torch.int64: "int64",
    torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
    torch.float64: "float64",
}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}

__all__ = ["save_ticket", "read_ticket", "load_ticket", "layer_name_problem", "TicketLimits",
           "FORMAT_NAME", "FORMAT_VERSION", "MAX_TICKET_BYTES", "MAX_HEADER_BYTES", "MAX_LAYERS",
           "MAX_LAYER_DIM", "MAX_NNZ", "LIMITS_ENV"]

Layer = tuple[str, CSRMatrix, "torch.Tensor | None"]


def layer_name_problem(name: Any) -> str | None:
    """Why `name` cannot name a ticket layer, or None if it can.

    A layer name is a Python identifier without dots of at most 64 characters
    ([A-Za-z_][A-Za-z0-9_]*), e.g. "fc1" or "layers_0".
    """
    if (isinstance(name, str) and len(name) <= MAX_LAYER_NAME_CHARS
            and _LAYER_NAME.fullmatch(name)):
        return None
    return (f"layer name {name!r:.80} is not allowed: use letters, digits and '_', not starting "
            f"with a digit, at most {MAX_LAYER_NAME_CHARS} characters (e.g. 'fc1' or 'layers_0')")


# ============================================================================ writing


def save_ticket(path: str | os.PathLike, layers: Sequence[Layer], *, activation: str = "relu",
                metadata: dict[str, Any] | None = None, fmt: str = "safetensors",
                mode: int = DEFAULT_MODE) -> dict:
    """Write a ticket file atomically and return its metadata document.

    path: destination file; its folder is created if missing. An existing file is replaced only
        once the new one is complete and fsynced (os.replace); on any failure it stays as it was.
    layers: [(name, CSRMatrix, bias)] from input to output. name: unique; letters, digits and
        "_", not starting with a digit, at most 64 characters (e.g. "fc1" or "layers_0"; no
        dots: names become SparseMLP module names). CSRMatrix of
        shape (out_features, in_features) on any device (copied to the CPU, dtypes kept: indptr
        int32/int64, indices uint16/int32/int64, values float32/float16/bfloat16/float64).
        bias: float tensor of shape (out_features,) or None; stored in its own dtype.
        Consecutive layers must chain: layer i's n_cols == layer i-1's n_rows.
        Build them with lth_sparse.bridge.convert.csr_from_linear(linear, name=name) (torch-prune-pruned or plain
        nn.Linear) or CSRMatrix.from_dense(weight, mask, name=name), bias = linear.bias.
    activation: nonlinearity between layers (none after the last); only "relu".
    metadata: JSON-serialisable dict stored verbatim under "metadata" (e.g. source run,
        round, sparsity target, test accuracy, git SHA). Package/torch/numpy versions and the
        creation time are added under "created_by" by this function.
    fmt: "safetensors" (default) or "npz" (see the module docstring for both layouts).
    mode: file permission bits before the process umask (default 0o666: 0o644 under umask
        022, readable where the ticket is deployed); 0o600 keeps it private.

    Raises CSRError (a layer violates a CSR invariant, naming it) or ConfigError (bad name,
    chain mismatch, bias shape, activation, format, unserialisable metadata) before writing.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown ticket format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unsupported activation {activation!r}; tickets support "
                          f"{', '.join(ACTIVATIONS)}")
    if not _is_int(mode) or not 0 <= mode <= 0o777:
        raise ConfigError(f"mode must be permission bits in 0o000..0o777 (e.g. 0o644), got {mode!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise ConfigError(f"metadata must be a dict, got {type(metadata).__name__}")
    layers = _check_layers_for_save(layers)

    # Every tensor as stored: (key, part, logical dtype, CPU tensor in its stored dtype).
    stored: dict[str, dict[str, tuple[str, torch.dtype, torch.Tensor]]] = {}
    for name, csr, bias in layers:
        parts = {"indptr": csr.indptr, "indices": csr.indices, "values": csr.values}
        if bias is not None:
            parts["bias"] = bias
        stored[name] = {}
        for part, t in parts.items():
            t = t.detach().to("cpu").contiguous()
            logical = t.dtype
            if fmt == "npz" and t.dtype == torch.bfloat16:
                t = t.float()  # numpy has no bfloat16; float32 holds every bfloat16 exactly
            key = f"{name}.{part}" if fmt == "safetensors" else f"{name}.{_NPZ_SUFFIX[part]}"
            stored[name][part] = (key, logical, t)

    doc = _metadata_document(layers, stored, activation, metadata, fmt)
    try:
        doc_json = json.dumps(doc, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"ticket metadata must be JSON-serialisable: {exc}") from None

    if fmt == "safetensors":
        from safetensors.torch import save as st_save

        tensors = {key: t for parts in stored.values() for key, _, t in parts.values()}
        blob = st_save(tensors, metadata={METADATA_KEY: doc_json})
        _atomic_write(Path(path), lambda f: f.write(blob), mode)
    else:
        arrays: dict[str, np.ndarray] = {}
        for name, csr, _ in layers:
            for key, _, t in stored[name].values():
                arrays[key] = t.numpy()
            arrays[f"{name}.shape"] = np.array(csr.shape, dtype=np.int64)
        arrays[NPZ_METADATA_KEY] = np.array(doc_json)
        _atomic_write(Path(path), lambda f: np.savez(f, **arrays), mode)
    return doc


def _check_layers_for_save(layers: Sequence[Layer]) -> list[Layer]:
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise ConfigError("layers must be a list of (name, CSRMatrix, bias or None)")
    layers = list(layers)
    if not layers:
        raise ConfigError("a ticket needs at least one layer")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(layers):
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise ConfigError(f"layers[{i}] must be (name, CSRMatrix, bias or None), got {item!r:.80}")
        name, csr, bias = item
        problem = layer_name_problem(name)
        if problem:
            raise ConfigError(f"layers[{i}]: {problem}")
        if name in seen:
            raise ConfigError(f"layer name {name!r} appears twice; layer names must be unique")
        seen.add(name)
        if not isinstance(csr, CSRMatrix):
            raise ConfigError(f"layer {name!r}: expected a CSRMatrix, got {type(csr).__name__}; "
                              "build one with CSRMatrix.from_dense (or lth_sparse.bridge.convert.csr_from_linear)")
        csr.validate(name)
        if i and csr.n_cols != out[-1][1].n_rows:
            prev = out[-1][0]
            raise ConfigError(f"layer {name!r} takes {csr.n_cols} inputs but layer {prev!r} "
                              f"produces {out[-1][1].n_rows} outputs")
        if bias is not None:
            if not isinstance(bias, torch.Tensor):
                raise ConfigError(f"layer {name!r}: bias must be a tensor or None, got "
                                  f"{type(bias).__name__}")
            _check_bias(name, bias, csr.n_rows, ConfigError)
            bias = bias.detach()
        out.append((name, csr, bias))
    return out


def _check_bias(name: str, bias: torch.Tensor, n_rows: int, error: type[Exception]) -> None:
    if tuple(bias.shape) != (n_rows,):
        raise error(f"layer {name!r}: bias must have shape ({n_rows},) to match the weight's "
                    f"{n_rows} rows, got {tuple(bias.shape)}")
    if bias.dtype not in VALUE_DTYPES:
        raise error(f"layer {name!r}: bias dtype must be float32, float16, bfloat16 or float64, "
                    f"got {bias.dtype}")
    if not bool(torch.isfinite(bias).all()):
        raise error(f"layer {name!r}: bias values must be finite")


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _versions() -> dict[str, str]:
    from lth_sparse._version import __version__

    out = {"package": "lth_sparse", "version": __version__, "torch": torch.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    try:
        import safetensors
        out["safetensors"] = safetensors.__version__
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    out["time"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return out


def _metadata_document(layers, stored, activation, metadata, container) -> dict:
    layer_docs = {}
    for name, csr, bias in layers:
        tensors = {}
        for part, (key, logical, t) in stored[name].items():
            tensors[part] = {"key": key, "dtype": _DTYPE_NAMES[logical],
                             "stored_dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                             "sha256": _sha256(t)}
        layer_docs[name] = {
            "shape": list(csr.shape), "nnz": csr.nnz, "density": csr.density,
            "sparsity": csr.sparsity, "indptr_dtype": _DTYPE_NAMES[csr.indptr.dtype],
            "index_dtype": _DTYPE_NAMES[csr.index_dtype], "value_dtype": _DTYPE_NAMES[csr.dtype],
            "has_bias": bias is not None,
            "bias_dtype": _DTYPE_NAMES[bias.dtype] if bias is not None else None,
            "tensors": tensors,
        }
    nnz = sum(csr.nnz for _, csr, _ in layers)
    weights = sum(csr.n_rows * csr.n_cols for _, csr, _ in layers)
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "container": container,
        "architecture": {"sizes": [layers[0][1].n_cols] + [csr.n_rows for _, csr, _ in layers],
                         "activation": activation},
        "layer_order": [name for name, _, _ in layers],
        "layers": layer_docs,
        "totals": {"nnz": nnz, "weights": weights, "density": nnz / weights,
                   "sparsity": 1.0 - nnz / weights},
        "created_by": _versions(),
        "metadata": dict(metadata or {}),
    }


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], Any], mode: int) -> None:
    if path.is_dir():
        raise ConfigError(f"ticket path {str(path)!r} is a directory; give a file name")
    atomic_write(path, write, mode=mode)


# ============================================================================ limits

# A ticket file is untrusted input: every size it claims is checked against the bytes actually
# present and against these limits BEFORE anything proportional to a claim is allocated. The
# defaults fit any MLP this package trains with a wide margin (LeNet-300-100 is ~160 KB); raise
# them for genuinely huge tickets with read_ticket(..., limits={...}) or the environment variable
# LTH_SPARSE_TICKET_LIMITS="max_ticket_bytes=8589934592,max_layer_dim=100000000".
MAX_TICKET_BYTES = 2**30      # the file on disk, and the npz members' uncompressed total
MAX_HEADER_BYTES = 16 * 2**20  # safetensors JSON header / npz metadata document
MAX_LAYERS = 256
MAX_LAYER_DIM = 2**24         # n_rows and n_cols of one layer (n_cols is backed by no bytes)
MAX_NNZ = 2**28               # stored entries of one layer
LIMITS_ENV = "LTH_SPARSE_TICKET_LIMITS"


@dataclass(frozen=True)
class TicketLimits:
    """Upper bounds a ticket file must respect to be read (see the MAX_* module constants)."""

    max_ticket_bytes: int = MAX_TICKET_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES
    max_layers: int = MAX_LAYERS
    max_layer_dim: int = MAX_LAYER_DIM
    max_nnz: int = MAX_NNZ

    @classmethod
    def resolve(cls, limits: "TicketLimits | dict[str, int] | None" = None) -> "TicketLimits":
        """Defaults, overridden by LTH_SPARSE_TICKET_LIMITS, overridden by `limits`."""
        if isinstance(limits, TicketLimits):
            return limits
        overrides: dict[str, Any] = {}
        env = os.environ.get(LIMITS_ENV, "").strip()
        if env:
            for item in env.split(","):
                key, sep, value = item.partition("=")
                if not sep:
                    raise ConfigError(f"{LIMITS_ENV} must be comma-separated name=integer pairs "
                                      f"(e.g. max_ticket_bytes=8589934592), got {item!r}")
                try:
                    overrides[key.strip()] = int(value.strip())
                except ValueError:
                    raise ConfigError(f"{LIMITS_ENV}: {key.strip()} must be an integer, got "
                                      f"{value.strip()!r}") from None
        if limits is not None:
            if not isinstance(limits, dict):
                raise ConfigError("limits must be a TicketLimits or a dict of its fields, got "
                                  f"{type(limits).__name__}")
            overrides.update(limits)
        names = [f.name for f in dataclasses.fields(cls)]
        for key, value in overrides.items():
            if key not in names:
                raise ConfigError(f"unknown ticket limit {key!r}; choose from {', '.join(names)}")
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ticket limit {key} must be a positive integer, got {value!r}")
        return cls(**overrides)


def _over_limit(where: str, what: str, value: int, field: str, limit: int) -> TicketFileError:
    return TicketFileError(
        f"{where}: {what} is {value}, over the limit of {limit} ({field}); a genuine ticket this "
        f"large can be read with limits={{'{field}': N}} or {LIMITS_ENV}={field}=N")


# ============================================================================ reading

# safetensors dtype codes of the tensors a ticket holds
_ST_DTYPES = {"U16": torch.uint16, "I32": torch.int32, "I64": torch.int64,
              "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
              "F64": torch.float64}


@dataclass
class _Entry:
    """One stored tensor as its container header describes it (nothing loaded yet)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    locator: Any  # safetensors: offset in the data block; npz: the zip member name


def read_ticket(path: str | os.PathLike, *, limits: "TicketLimits | dict | None" = None
                ) -> tuple[list[Layer], dict]:
    """Read and fully validate a ticket file (safetensors or npz, detected from its bytes).

    Returns (layers, meta): layers = [(name, CSRMatrix on the CPU, bias tensor or None)] from
    input to output, tensors bitwise equal to what was saved (dtypes kept); meta = the JSON
    metadata document (see the module docstring; the caller's metadata under meta["metadata"]).

    limits: TicketLimits, or a dict overriding some of its fields (max_ticket_bytes,
    max_header_bytes, max_layers, max_layer_dim, max_nnz); default: the MAX_* constants,
    overridden by the LTH_SPARSE_TICKET_LIMITS environment variable.

    The file is untrusted: its size is checked before it is read, headers are read bounded, and
    every claimed shape and count is checked against the bytes present and the limits before
    the tensors are read. Raises, before returning anything:
      TicketFileError  missing/unreadable/truncated/oversized file, not a ticket, unknown format
                       or version, malformed metadata, bad layer name, missing or unexpected
                       tensor, checksum mismatch (naming the tensor), dtype/shape disagreeing
                       with the metadata, layer chain or bias shape mismatch, a limit exceeded;
      CSRError         a layer violates a CSR invariant (naming the layer and the invariant).
    """
    lim = TicketLimits.resolve(limits)
    path = Path(path)
    where = f"ticket {str(path)!r}"
    if not path.exists():
        raise TicketFileError(f"{where} does not exist; check the path (export one with "
                              "`lth-sparse export RUN -o FILE`)")
    if path.is_dir():
        raise TicketFileError(f"{where} is a directory, not a ticket file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > lim.max_ticket_bytes:
                raise _over_limit(where, "the file size", size, "max_ticket_bytes",
                                  lim.max_ticket_bytes)
            if size == 0:
                raise TicketFileError(f"{where} is empty (0 bytes): truncated or never written; "
                                      "export the ticket again")
            magic = f.read(4)
            f.seek(0)
            if magic == b"PK\x03\x04":
                return _read_npz(f, size, where, lim)
            return _read_safetensors(f, size, where, lim)
    except OSError as exc:
        raise TicketFileError(f"{where} cannot be read: {exc}") from None


def _not_a_ticket(where: str, why: str) -> TicketFileError:
    return TicketFileError(f"{where} is not an lth_sparse ticket file ({why}); tickets are "
                           "written by `lth-sparse export` / lth_sparse.sparse.ticket_file.save_ticket")


def _read_exactly(f, n: int, where: str, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TicketFileError(f"{where} is truncated: {what} needs {n} bytes but only "
                              f"{len(data)} are there; export it again")
    return data


def _json_loads(text: str | bytes, where: str, what: str) -> Any:
    try:
        return json.loads(text)
    # ValueError covers JSONDecodeError, bad UTF-8 and integers too long to parse;
    # RecursionError: deeply nested arrays
    except (ValueError, TypeError, RecursionError) as exc:
        raise TicketFileError(f"{where} has a corrupt {what} ({str(exc)[:200]}); export it "
                              "again") from None


def _read_safetensors(f, size: int, where: str, lim: TicketLimits):
    if size < 8:
        raise _not_a_ticket(where, f"only {size} bytes")
    header_len = int.from_bytes(f.read(8), "little")
    first = f.read(1)
    if first != b"{":
        raise _not_a_ticket(where, "neither a safetensors nor an npz file")
    if header_len > lim.max_header_bytes:
        raise _over_limit(where, "the safetensors header length", header_len, "max_header_bytes",
                          lim.max_header_bytes)
    if header_len > size - 8:
        raise TicketFileError(f"{where} is truncated: its safetensors header needs "
                              f"{header_len} bytes but only {size - 8} follow; export it again")
    header = _json_loads(first + _read_exactly(f, header_len - 1, where, "the header"), where,
                         "safetensors header")
    if not isinstance(header, dict):
        raise _not_a_ticket(where, "safetensors header is not a JSON object")
    body = size - 8 - header_len
    st_meta = header.pop("__metadata__", None) or {}
    if len(header) > 4 * lim.max_layers:
        raise _over_limit(where, "the number of tensors", len(header), "max_layers",
                          lim.max_layers)
    entries: dict[str, _Entry] = {}
    for key, info in header.items():
        entry = _st_entry(info) if isinstance(info, dict) else "it is not a JSON object"
        if isinstance(entry, str):
            raise TicketFileError(f"{where} has a corrupt safetensors header entry for "
                                  f"{key!r:.80}: {entry}; export it again")
        entries[key] = entry
    # The tensors must tile the data block exactly: no gaps, no overlaps, no hidden bytes.
    end = 0
    for key, e in sorted(entries.items(), key=lambda kv: kv[1].locator):
        if e.locator != end:
            raise TicketFileError(f"{where} has a corrupt safetensors header: tensor {key!r} "
                                  f"starts at data byte {e.locator}, expected {end}")
        end += e.nbytes
    if end > body:
        raise TicketFileError(f"{where} is truncated: its tensors need {end} data bytes but the "
                              f"file holds {body}; export it again")
    if end < body:
        raise TicketFileError(f"{where} has {body - end} bytes after its last tensor; the file "
                              "is corrupt, export it again")
    if not isinstance(st_meta, dict) or not isinstance(st_meta.get(METADATA_KEY), str):
        raise _not_a_ticket(where, f"a safetensors file without the {METADATA_KEY!r} metadata")
    meta = _parse_metadata(st_meta[METADATA_KEY], where)
    plan = _plan_layers(meta, entries, where, lim, npz=False)

    # Every claim is now consistent with the file size and the limits: read the data block.
    data = bytearray(body)
    if f.readinto(data) != body:
        raise TicketFileError(f"{where} is truncated (it shrank while being read); export it again")
    view = memoryview(data)

    def fetch(key: str):
        e = entries[key]
        raw = view[e.locator:e.locator + e.nbytes]
        return _tensor_from_bytes(raw, e), raw

    return _assemble(meta, plan, fetch, where)


def _st_entry(info: dict) -> "_Entry | str":
    """The entry a safetensors header describes, or why it cannot be one of a ticket's."""
    code = info.get("dtype")
    dtype = _ST_DTYPES.get(code) if isinstance(code, str) else None
    shape, offs = info.get("shape"), info.get("data_offsets")
    if dtype is None:
        return f"dtype {code!r:.40} is not one of {', '.join(_ST_DTYPES)}"
    if not _is_shape(shape):
        return f"shape {shape!r:.80} is not a list of at most 2 non-negative ints"
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)
            and 0 <= offs[0] <= offs[1]):
        return f"data_offsets {offs!r:.80} are not [begin, end] with 0 <= begin <= end"
    nbytes = math.prod(shape) * dtype.itemsize
    if offs[1] - offs[0] != nbytes:
        return (f"shape {shape} of {code} needs {nbytes} bytes but data_offsets {offs} span "
                f"{offs[1] - offs[0]}")
    return _Entry(dtype, tuple(shape), nbytes, offs[0])


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_shape(shape: Any) -> bool:
    return isinstance(shape, list) and len(shape) <= 2 and all(_is_int(s) and s >= 0 for s in shape)


def _tensor_from_bytes(raw: memoryview, e: _Entry) -> torch.Tensor:
    if e.nbytes == 0:
        return torch.empty(e.shape, dtype=e.dtype)
    # clone: an owned, aligned copy (offsets in a hostile file need not be aligned)
    t = torch.frombuffer(raw, dtype=torch.uint8).clone()
    return t.view(e.dtype).reshape(e.shape)


# numpy writes members with these; anything else (bzip2, lzma, encryption) is not ours
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_NPY_DTYPES = {"uint16", "int32", "int64", "float16", "float32", "float64"}


def _read_npz(f, size: int, where: str, lim: TicketLimits):
    # zipfile and zlib raise a zoo of exception types for damaged archives (BadZipFile, EOFError,
    # zlib.error, struct.error, ValueError, NotImplementedError...): every one means "corrupt".
    try:
        with zipfile.ZipFile(f) as zf:
            return _read_npz_members(zf, where, lim)
    except LthSparseError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        raise TicketFileError(f"{where} is a truncated or corrupt npz file "
                              f"({type(exc).__name__}: {str(exc)[:200]}); export it again") from None


def _read_npz_members(zf: zipfile.ZipFile, where: str, lim: TicketLimits):
    infos = zf.infolist()
    if len(infos) > 5 * lim.max_layers + 1:
        raise _over_limit(where, "the number of npz members", len(infos), "max_layers",
                          lim.max_layers)
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise TicketFileError(f"{where}: npz member {info.filename!r} is not a .npy array")
        key = info.filename[:-4]
        if key in members:
            raise TicketFileError(f"{where}: npz member {info.filename!r} appears twice")
        if info.flag_bits & 0x1:
            raise TicketFileError(f"{where}: npz member {info.filename!r} is encrypted")
        if info.compress_type not in _ZIP_METHODS:
            raise TicketFileError(f"{where}: npz member {info.filename!r} uses zip compression "
                                  f"method {info.compress_type}; only stored and deflated are read")
        members[key] = info
    total = sum(i.file_size for i in infos)  # uncompressed sizes, from the zip headers
    if total > lim.max_ticket_bytes:
        raise _over_limit(where, "the npz members' uncompressed size", total,
                          "max_ticket_bytes", lim.max_ticket_bytes)

    if NPZ_METADATA_KEY not in members:
        raise _not_a_ticket(where, f"an npz file without the {NPZ_METADATA_KEY!r} entry")
    headers = {key: _npy_header(zf, info, where, lim) for key, info in members.items()}
    doc_dtype, doc_shape, _ = headers.pop(NPZ_METADATA_KEY)
    if doc_dtype.kind != "U" or doc_shape != ():
        raise TicketFileError(f"{where}: npz entry {NPZ_METADATA_KEY!r} must be a JSON string")
    if doc_dtype.itemsize > 4 * lim.max_header_bytes:  # 4 bytes per character (UTF-32)
        raise _over_limit(where, "the npz metadata document size", doc_dtype.itemsize // 4,
                          "max_header_bytes", lim.max_header_bytes)
    doc = _npy_data(zf, members[NPZ_METADATA_KEY], where)
    meta = _parse_metadata(str(np.frombuffer(doc, dtype=doc_dtype).reshape(())), where)

    entries: dict[str, _Entry] = {}
    for key, (dtype, shape, _) in headers.items():
        if key.endswith(".shape"):
            if dtype.name != "int64" or shape != (2,):
                raise TicketFileError(f"{where}: npz entry {key!r} must be int64 of shape (2,), "
                                      f"got {dtype} {shape}")
            entries[key] = _Entry(torch.int64, shape, 16, key)
            continue
        if dtype.name not in _NPY_DTYPES or len(shape) > 2:
            raise TicketFileError(f"{where}: npz array {key!r} has unsupported dtype/shape "
                                  f"{dtype} {shape}")
        tdtype = _DTYPES[dtype.name]
        entries[key] = _Entry(tdtype, shape, math.prod(shape) * tdtype.itemsize, key)
    plan = _plan_layers(meta, entries, where, lim, npz=True)

    def fetch(key: str):
        e = entries[key]
        raw = memoryview(bytearray(_npy_data(zf, members[key], where)))
        return _tensor_from_bytes(raw, e), raw

    return _assemble(meta, plan, fetch, where)


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, lim: TicketLimits):
    """(dtype, shape, header bytes) of one .npy member, read from its header alone.

    The claimed array size plus the header must equal the member's uncompressed size from the
    zip header, so nothing a header claims is allocated before it is known to be present.
    """
    from numpy.lib import format as npy

    name = info.filename
    with zf.open(info) as fp:
        version = npy.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(fp, max_header_size=lim.max_header_bytes)
        elif version == (2, 0):
            shape, fortran, dtype = npy.read_array_header_2_0(fp, max_header_size=lim.max_header_bytes)
        else:
            raise TicketFileError(f"{where}: npz member {name!r} has .npy format {version}; "
                                  "only 1.0 and 2.0 are read")
        header_bytes = fp.tell()
    if dtype.hasobject or dtype.byteorder == ">" or (fortran and len(shape) > 1):
        raise TicketFileError(f"{where}: npz member {name!r} has unsupported layout "
                              f"(dtype {dtype}, fortran_order={fortran})")
    nbytes = math.prod(shape) * dtype.itemsize
    if header_bytes + nbytes != info.file_size:
        raise TicketFileError(f"{where}: npz member {name!r} claims shape {shape} of {dtype} "
                              f"({nbytes} bytes) but holds {info.file_size - header_bytes}; the "
                              "file is corrupt, export it again")
    return dtype, shape, header_bytes


def _npy_data(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> bytes:
    """The data bytes of a .npy member whose header _npy_header accepted (bounded read)."""
    from numpy.lib import format as npy

    with zf.open(info) as fp:
        version = npy.read_magic(fp)
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        read_header(fp, max_header_size=info.file_size)
        n = info.file_size - fp.tell()
        return _read_exactly(fp, n, where, f"npz member {info.filename!r}")


def _parse_metadata(text: Any, where: str) -> dict:
    meta = _json_loads(text, where, "ticket metadata (not valid JSON)")
    if not isinstance(meta, dict):
        raise TicketFileError(f"{where}: the ticket metadata must be a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise _not_a_ticket(where, f"format is {meta.get('format')!r:.80}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        from lth_sparse._version import __version__

        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise TicketFileError(f"{where} has ticket format version {version!r:.40}; this lth_sparse "
                              f"({__version__}) reads format version {readable} only. Use the "
                              "lth_sparse version that wrote it, or re-export the ticket")
    return meta


def _field(d: Any, key: str, kind, where: str, label: str):
    if not isinstance(d, dict) or key not in d:
        raise TicketFileError(f"{where}: metadata field {label!r} is missing")
    value = d[key]
    ok = _is_int(value) if kind is int else isinstance(value, kind)
    if not ok:
        raise TicketFileError(f"{where}: metadata field {label!r} has the wrong type "
                              f"({type(value).__name__})")
    return value


@dataclass
class _PartPlan:
    key: str
    dtype: torch.dtype   # logical dtype (bfloat16 may be stored as float32 in npz)
    sha256: str


@dataclass
class _LayerPlan:
    name: str
    shape: tuple[int, int]
    nnz: int
    parts: dict[str, _PartPlan]


def _plan_layers(meta: dict, entries: dict[str, _Entry], where: str, lim: TicketLimits, *,
                 npz: bool) -> list[_LayerPlan]:
    """Check the metadata against the container's tensor headers and the limits; reads no data.

    After this, every tensor the metadata describes is known to be present with the dtype and
    shape its layer needs (indptr (n_rows + 1,), indices/values (nnz,), bias (n_rows,)), every
    present tensor is described, and shapes and counts are within the limits.
    """
    arch = _field(meta, "architecture", dict, where, "architecture")
    sizes = _field(arch, "sizes", list, where, "architecture.sizes")
    activation = _field(arch, "activation", str, where, "architecture.activation")
    if activation not in ACTIVATIONS:
        raise TicketFileError(f"{where}: unsupported activation {activation!r:.40}; this "
                              f"lth_sparse supports {', '.join(ACTIVATIONS)}")
    order = _field(meta, "layer_order", list, where, "layer_order")
    docs = _field(meta, "layers", dict, where, "layers")
    if len(order) > lim.max_layers:
        raise _over_limit(where, "the number of layers", len(order), "max_layers", lim.max_layers)
    if not order or not all(isinstance(n, str) for n in order) or len(set(order)) != len(order):
        raise TicketFileError(f"{where}: metadata 'layer_order' must list unique layer names")
    for name in order:
        problem = layer_name_problem(name)
        if problem:
            raise TicketFileError(f"{where}: {problem}")
    if set(order) != set(docs):
        raise TicketFileError(f"{where}: metadata 'layer_order' {order} and 'layers' "
                              f"{sorted(docs)[:20]} disagree")

    claimed: set[str] = set()
    plans: list[_LayerPlan] = []
    for name in order:
        doc = docs[name]
        label = f"layers.{name}"
        shape = _field(doc, "shape", list, where, f"{label}.shape")
        if len(shape) != 2 or not all(_is_int(s) and s > 0 for s in shape):
            raise TicketFileError(f"{where}: layer {name!r} has an invalid shape {shape!r:.80} in "
                                  "the metadata; expected [out_features, in_features] > 0")
        n_rows, n_cols = shape
        for dim, value in (("n_rows", n_rows), ("n_cols", n_cols)):
            if value > lim.max_layer_dim:
                raise _over_limit(where, f"layer {name!r} {dim}", value, "max_layer_dim",
                                  lim.max_layer_dim)
        nnz = _field(doc, "nnz", int, where, f"{label}.nnz")
        if not 0 <= nnz <= n_rows * n_cols:
            raise TicketFileError(f"{where}: layer {name!r} claims nnz = {nnz}, outside "
                                  f"[0, {n_rows} * {n_cols}]")
        if nnz > lim.max_nnz:
            raise _over_limit(where, f"layer {name!r} nnz", nnz, "max_nnz", lim.max_nnz)
        has_bias = _field(doc, "has_bias", bool, where, f"{label}.has_bias")
        tdocs = _field(doc, "tensors", dict, where, f"{label}.tensors")
        want_shape = {"indptr": (n_rows + 1,), "indices": (nnz,), "values": (nnz,),
                      "bias": (n_rows,)}
        recorded_dtype = {"indptr": "indptr_dtype", "indices": "index_dtype",
                          "values": "value_dtype", "bias": "bias_dtype"}
        parts: dict[str, _PartPlan] = {}
        for part in _PARTS:
            if part == "bias" and not has_bias:
                if "bias" in tdocs:
                    raise TicketFileError(f"{where}: layer {name!r} says has_bias=false but "
                                          "lists a bias tensor")
                continue
            plabel = f"{label}.tensors.{part}"
            td = _field(tdocs, part, dict, where, plabel)
            key = _field(td, "key", str, where, f"{plabel}.key")
            if key in claimed:
                raise TicketFileError(f"{where}: tensor {key!r:.80} is claimed twice in the metadata")
            claimed.add(key)
            entry = entries.get(key)
            if entry is None:
                raise TicketFileError(f"{where}: tensor {key!r:.80} (layer {name!r} {part}) is "
                                      "missing from the file; the file is incomplete, export "
                                      "it again")
            stored_name = _field(td, "stored_dtype", str, where, f"{plabel}.stored_dtype")
            dtype_name = _field(td, "dtype", str, where, f"{plabel}.dtype")
            if stored_name not in _DTYPES or dtype_name not in _DTYPES:
                raise TicketFileError(f"{where}: tensor {key!r} has unknown dtype "
                                      f"{dtype_name!r:.40}/{stored_name!r:.40} in the metadata")
            if entry.dtype != _DTYPES[stored_name]:
                raise TicketFileError(f"{where}: tensor {key!r} is stored as "
                                      f"{_DTYPE_NAMES[entry.dtype]} but the metadata says "
                                      f"{stored_name}")
            if dtype_name != stored_name and not (stored_name == "float32"
                                                  and dtype_name == "bfloat16"):
                raise TicketFileError(f"{where}: tensor {key!r}: storing {dtype_name} as "
                                      f"{stored_name} is not supported")
            if doc.get(recorded_dtype[part]) != dtype_name:
                raise TicketFileError(f"{where}: layer {name!r}: metadata "
                                      f"{recorded_dtype[part]} = {doc.get(recorded_dtype[part])!r:.40}"
                                      f" but tensor {key!r} is {dtype_name}")
            tshape = _field(td, "shape", list, where, f"{plabel}.shape")
            if tuple(tshape) != entry.shape:
                raise TicketFileError(f"{where}: tensor {key!r} has shape {list(entry.shape)} but "
                                      f"the metadata says {tshape!r:.80}")
            if entry.shape != want_shape[part]:
                raise TicketFileError(f"{where}: tensor {key!r} has shape {list(entry.shape)}; "
                                      f"layer {name!r} of shape {shape} with nnz {nnz} needs "
                                      f"{list(want_shape[part])}")
            sha = _field(td, "sha256", str, where, f"{plabel}.sha256")
            parts[part] = _PartPlan(key, _DTYPES[dtype_name], sha)
        if npz:
            skey = f"{name}.shape"
            claimed.add(skey)
            if skey not in entries:
                raise TicketFileError(f"{where}: npz entry {skey!r} is missing; export it again")
            parts["shape"] = _PartPlan(skey, torch.int64, "")
        if plans and n_cols != plans[-1].shape[0]:
            prev = plans[-1]
            raise TicketFileError(f"{where}: layer {name!r} takes {n_cols} inputs but layer "
                                  f"{prev.name!r} produces {prev.shape[0]} outputs; the layers "
                                  "do not chain")
        plans.append(_LayerPlan(name, (n_rows, n_cols), nnz, parts))

    unexpected = sorted(set(entries) - claimed)
    if unexpected:
        raise TicketFileError(f"{where}: unexpected tensors not described by the metadata: "
                              f"{', '.join(k[:80] for k in unexpected[:10])}")
    actual_sizes = [plans[0].shape[1]] + [p.shape[0] for p in plans]
    if sizes != actual_sizes:
        raise TicketFileError(f"{where}: metadata architecture sizes {sizes!r:.200} disagree with "
                              f"the layers' shapes {actual_sizes}")
    return plans


def _assemble(meta: dict, plans: list[_LayerPlan], fetch, where: str
              ) -> tuple[list[Layer], dict]:
    """Read each planned tensor, verify its checksum, and build validated CSR layers."""
    layers: list[Layer] = []
    for plan in plans:
        parts: dict[str, torch.Tensor] = {}
        for part, pp in plan.parts.items():
            t, raw = fetch(pp.key)
            if part == "shape":  # npz only: a copy of the shape for numpy/scipy readers
                if t.tolist() != list(plan.shape):
                    raise TicketFileError(f"{where}: npz entry {pp.key!r} = {t.tolist()} "
                                          f"disagrees with the metadata shape {list(plan.shape)}")
                continue
            digest = hashlib.sha256(raw).hexdigest()
            if digest != pp.sha256:
                raise TicketFileError(f"{where}: checksum mismatch for tensor {pp.key!r}: the "
                                      f"file holds sha256 {digest[:16]}..., the metadata records "
                                      f"{pp.sha256[:16]}...; the file is corrupt, export it again")
            parts[part] = t.to(pp.dtype) if t.dtype != pp.dtype else t
        csr = CSRMatrix(parts["indptr"], parts["indices"], parts["values"], plan.shape)
        csr.validate(plan.name)  # the one home of the CSR invariants: CSRError naming the layer
        bias = parts.get("bias")
        if bias is not None:
            _check_bias(plan.name, bias, csr.n_rows, TicketFileError)
        layers.append((plan.name, csr, bias))
    return layers, meta


# ============================================================================ loading


def load_ticket(path: str | os.PathLike, backend: str = "auto", device: str | torch.device = "cpu",
                *, limits: "TicketLimits | dict | None" = None):
    """Read and validate a ticket file, then build a ready-to-run `SparseMLP` on `device`.

    backend: "auto", "reference", "cpu" or "triton" (see lth_sparse.sparse.ops). The model's
    parameters keep the stored values' dtype; its input must have that dtype. The metadata
    document is attached as `model.ticket_metadata`. limits: as for read_ticket.
    """
    from lth_sparse.sparse.nn import (
        SparseMLP,  # lazy: the ticket format needs no kernels
    )

    layers, meta = read_ticket(path, limits=limits)
    device = torch.device(device)
    layers = [(name, csr.to(device), bias.to(device) if bias is not None else None)
              for name, csr, bias in layers]
    model = SparseMLP.from_csr_layers(layers, activation=meta["architecture"]["activation"],
                                      backend=backend)
    model.ticket_metadata = meta
    return model
