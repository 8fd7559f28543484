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
interrupted save never leaves a half file and never clobbers an existing good one. Reads check
everything (structure, checksums, CSR invariants, shapes) before returning anything.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import platform
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lth_sparse.errors import ConfigError, TicketFileError
from lth_sparse.fileio import atomic_write
from lth_sparse.sparse.csr import VALUE_DTYPES, CSRMatrix

FORMAT_NAME = "lth_sparse.ticket"
FORMAT_VERSION = 1
READABLE_VERSIONS = (1,)
METADATA_KEY = "lth_sparse"        # safetensors metadata key holding the JSON document
NPZ_METADATA_KEY = "__lth_sparse__"  # npz entry holding the JSON document
ACTIVATIONS = ("relu",)
FORMATS = ("safetensors", "npz")
_LAYER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")
_PARTS = ("indptr", "indices", "values", "bias")
_NPZ_SUFFIX = {"indptr": "indptr", "indices": "indices", "values": "data", "bias": "bias"}

_DTYPE_NAMES = {
    torch.uint16: "uint16", torch.int32: "int32", torch.int64: "int64",
    torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
    torch.float64: "float64",
}
_DTYPES = {v: k for k, v in _DTYPE_NAMES.items()}

__all__ = ["save_ticket", "read_ticket", "load_ticket", "FORMAT_NAME", "FORMAT_VERSION"]

Layer = tuple[str, CSRMatrix, "torch.Tensor | None"]


# ============================================================================ writing


def save_ticket(path: str | os.PathLike, layers: Sequence[Layer], *, activation: str = "relu",
                metadata: dict[str, Any] | None = None, fmt: str = "safetensors") -> dict:
    """Write a ticket file atomically and return its metadata document.

    path: destination file; its folder is created if missing. An existing file is replaced only
        once the new one is complete and fsynced (os.replace); on any failure it stays as it was.
    layers: [(name, CSRMatrix, bias)] from input to output. name: a unique identifier
        (letters, digits, "_", "-", dot-separated parts, e.g. "fc1" or "layers.0"). CSRMatrix of
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

    Raises CSRError (a layer violates a CSR invariant, naming it) or ConfigError (bad name,
    chain mismatch, bias shape, activation, format, unserialisable metadata) before writing.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown ticket format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unsupported activation {activation!r}; tickets support "
                          f"{', '.join(ACTIVATIONS)}")
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
        _atomic_write(Path(path), lambda f: f.write(blob))
    else:
        arrays: dict[str, np.ndarray] = {}
        for name, csr, _ in layers:
            for key, _, t in stored[name].values():
                arrays[key] = t.numpy()
            arrays[f"{name}.shape"] = np.array(csr.shape, dtype=np.int64)
        arrays[NPZ_METADATA_KEY] = np.array(doc_json)
        if len(arrays) != len(set(arrays)):  # pragma: no cover - keys are unique by construction
            raise ConfigError("duplicate npz entries")
        _atomic_write(Path(path), lambda f: np.savez(f, **arrays))
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
        if not isinstance(name, str) or not _LAYER_NAME.match(name):
            raise ConfigError(f"layers[{i}]: layer name {name!r} must be letters, digits, '_' or "
                              "'-' in dot-separated parts (e.g. 'fc1' or 'layers.0')")
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


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], Any]) -> None:
    if path.is_dir():
        raise ConfigError(f"ticket path {str(path)!r} is a directory; give a file name")
    atomic_write(path, write)


# ============================================================================ reading


def read_ticket(path: str | os.PathLike) -> tuple[list[Layer], dict]:
    """Read and fully validate a ticket file (safetensors or npz, detected from its bytes).

    Returns (layers, meta): layers = [(name, CSRMatrix on the CPU, bias tensor or None)] from
    input to output, tensors bitwise equal to what was saved (dtypes kept); meta = the JSON
    metadata document (see the module docstring; the caller's metadata under meta["metadata"]).

    Raises, before returning anything:
      TicketFileError  missing/unreadable/truncated file, not a ticket, unknown format or
                       version, malformed metadata, missing or unexpected tensor, checksum
                       mismatch (naming the tensor), dtype/shape disagreeing with the metadata,
                       layer chain or bias shape mismatch;
      CSRError         a layer violates a CSR invariant (naming the layer and the invariant).
    """
    path = Path(path)
    where = f"ticket {str(path)!r}"
    if not path.exists():
        raise TicketFileError(f"{where} does not exist; check the path (export one with "
                              "`lth-sparse export RUN -o FILE`)")
    if path.is_dir():
        raise TicketFileError(f"{where} is a directory, not a ticket file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TicketFileError(f"{where} cannot be read: {exc}") from None
    npz = data[:4] == b"PK\x03\x04"
    if npz:
        meta, tensors, raw = _read_npz(data, where)
    else:
        meta, tensors, raw = _read_safetensors(data, where)
    layers = _build_layers(meta, tensors, raw, where, npz=npz)
    return layers, meta


def _not_a_ticket(where: str, why: str) -> TicketFileError:
    return TicketFileError(f"{where} is not an lth_sparse ticket file ({why}); tickets are "
                           "written by `lth-sparse export` / lth_sparse.sparse.ticket_file.save_ticket")


def _read_safetensors(data: bytes, where: str):
    size = len(data)
    if size < 8:
        if size == 0:
            raise TicketFileError(f"{where} is empty (0 bytes): truncated or never written; "
                                  "export the ticket again")
        raise _not_a_ticket(where, f"only {size} bytes")
    header_len = int.from_bytes(data[:8], "little")
    looks_like_header = data[8:9] == b"{"
    if not looks_like_header:
        raise _not_a_ticket(where, "neither a safetensors nor an npz file")
    if header_len > size - 8:
        raise TicketFileError(f"{where} is truncated: its safetensors header needs "
                              f"{header_len} bytes but only {size - 8} follow; export it again")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TicketFileError(f"{where} has a corrupt safetensors header ({exc}); "
                              "export it again") from None
    if not isinstance(header, dict):
        raise _not_a_ticket(where, "safetensors header is not a JSON object")
    body = size - 8 - header_len
    end = 0
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise TicketFileError(f"{where} has a corrupt safetensors header entry for {key!r}")
        entries[key] = offs
        end = max(end, offs[1])
    if end > body:
        raise TicketFileError(f"{where} is truncated: its tensors need {end} data bytes but the "
                              f"file holds {body}; export it again")
    st_meta = header.get("__metadata__") or {}
    if not isinstance(st_meta, dict) or METADATA_KEY not in st_meta:
        raise _not_a_ticket(where, f"a safetensors file without the {METADATA_KEY!r} metadata")
    meta = _parse_metadata(st_meta[METADATA_KEY], where)
    try:
        from safetensors.torch import load as st_load

        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise TicketFileError(f"{where}: safetensors could not read the tensors ({exc}); the "
                              "file is corrupt, export it again") from None
    start = 8 + header_len
    raw = {key: data[start + a:start + b] for key, (a, b) in entries.items()}
    return meta, tensors, raw


def _read_npz(data: bytes, where: str):
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise TicketFileError(f"{where} is a truncated or corrupt npz file ({exc}); export it "
                              "again") from None
    if NPZ_METADATA_KEY not in arrays:
        raise _not_a_ticket(where, f"an npz file without the {NPZ_METADATA_KEY!r} entry")
    doc = arrays.pop(NPZ_METADATA_KEY)
    if doc.dtype.kind != "U" or doc.shape != ():
        raise TicketFileError(f"{where}: npz entry {NPZ_METADATA_KEY!r} must be a JSON string")
    meta = _parse_metadata(str(doc), where)
    tensors, raw = {}, {}
    for key, arr in arrays.items():
        if key.endswith(".shape"):
            tensors[key] = arr  # kept as numpy: checked against the metadata's shape
            continue
        if arr.dtype.byteorder == ">" or arr.dtype.name not in _DTYPES:
            raise TicketFileError(f"{where}: npz array {key!r} has unsupported dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        raw[key] = arr.tobytes()
        tensors[key] = torch.from_numpy(arr.copy())
    return meta, tensors, raw


def _parse_metadata(text: Any, where: str) -> dict:
    try:
        meta = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise TicketFileError(f"{where}: the ticket metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise TicketFileError(f"{where}: the ticket metadata must be a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise _not_a_ticket(where, f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        from lth_sparse._version import __version__

        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise TicketFileError(f"{where} has ticket format version {version!r}; this lth_sparse "
                              f"({__version__}) reads format version {readable} only. Use the "
                              "lth_sparse version that wrote it, or re-export the ticket")
    return meta


def _field(d: Any, key: str, kind, where: str, label: str):
    if not isinstance(d, dict) or key not in d:
        raise TicketFileError(f"{where}: metadata field {label!r} is missing")
    value = d[key]
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise TicketFileError(f"{where}: metadata field {label!r} has the wrong type "
                              f"({type(value).__name__})")
    return value


def _build_layers(meta: dict, tensors: dict, raw: dict[str, bytes], where: str, *,
                  npz: bool) -> list[Layer]:
    arch = _field(meta, "architecture", dict, where, "architecture")
    sizes = _field(arch, "sizes", list, where, "architecture.sizes")
    activation = _field(arch, "activation", str, where, "architecture.activation")
    if activation not in ACTIVATIONS:
        raise TicketFileError(f"{where}: unsupported activation {activation!r}; this lth_sparse "
                              f"supports {', '.join(ACTIVATIONS)}")
    order = _field(meta, "layer_order", list, where, "layer_order")
    docs = _field(meta, "layers", dict, where, "layers")
    if not order or not all(isinstance(n, str) for n in order) or len(set(order)) != len(order):
        raise TicketFileError(f"{where}: metadata 'layer_order' must list unique layer names")
    if set(order) != set(docs):
        raise TicketFileError(f"{where}: metadata 'layer_order' {order} and 'layers' "
                              f"{sorted(docs)} disagree")

    claimed: set[str] = set()
    layers: list[Layer] = []
    for i, name in enumerate(order):
        doc = docs[name]
        label = f"layers.{name}"
        shape = _field(doc, "shape", list, where, f"{label}.shape")
        if len(shape) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                      for s in shape):
            raise TicketFileError(f"{where}: layer {name!r} has an invalid shape {shape} in the "
                                  "metadata; expected [out_features, in_features] > 0")
        has_bias = _field(doc, "has_bias", bool, where, f"{label}.has_bias")
        tdocs = _field(doc, "tensors", dict, where, f"{label}.tensors")
        parts = {}
        for part in _PARTS:
            if part == "bias" and not has_bias:
                if "bias" in tdocs:
                    raise TicketFileError(f"{where}: layer {name!r} says has_bias=false but "
                                          "lists a bias tensor")
                continue
            td = _field(tdocs, part, dict, where, f"{label}.tensors.{part}")
            key = _field(td, "key", str, where, f"{label}.tensors.{part}.key")
            if key in claimed:
                raise TicketFileError(f"{where}: tensor {key!r} is claimed twice in the metadata")
            claimed.add(key)
            if key not in tensors:
                raise TicketFileError(f"{where}: tensor {key!r} (layer {name!r} {part}) is "
                                      "missing from the file; the file is incomplete, export "
                                      "it again")
            digest = hashlib.sha256(raw[key]).hexdigest()
            expected = _field(td, "sha256", str, where, f"{label}.tensors.{part}.sha256")
            if digest != expected:
                raise TicketFileError(f"{where}: checksum mismatch for tensor {key!r}: the file "
                                      f"holds sha256 {digest[:16]}..., the metadata records "
                                      f"{expected[:16]}...; the file is corrupt, export it again")
            t = tensors[key]
            stored_name = _field(td, "stored_dtype", str, where, f"{label}.tensors.{part}.stored_dtype")
            dtype_name = _field(td, "dtype", str, where, f"{label}.tensors.{part}.dtype")
            if stored_name not in _DTYPES or dtype_name not in _DTYPES:
                raise TicketFileError(f"{where}: tensor {key!r} has unknown dtype "
                                      f"{dtype_name!r}/{stored_name!r} in the metadata")
            if t.dtype != _DTYPES[stored_name]:
                raise TicketFileError(f"{where}: tensor {key!r} is stored as "
                                      f"{_DTYPE_NAMES.get(t.dtype, t.dtype)} but the metadata "
                                      f"says {stored_name}")
            tshape = _field(td, "shape", list, where, f"{label}.tensors.{part}.shape")
            if list(t.shape) != tshape:
                raise TicketFileError(f"{where}: tensor {key!r} has shape {list(t.shape)} but "
                                      f"the metadata says {tshape}")
            if dtype_name != stored_name:
                if not (stored_name == "float32" and dtype_name == "bfloat16"):
                    raise TicketFileError(f"{where}: tensor {key!r}: storing {dtype_name} as "
                                          f"{stored_name} is not supported")
                t = t.to(torch.bfloat16)
            parts[part] = t
        if npz:
            skey = f"{name}.shape"
            claimed.add(skey)
            if skey not in tensors:
                raise TicketFileError(f"{where}: npz entry {skey!r} is missing; export it again")
            if [int(s) for s in np.asarray(tensors[skey]).reshape(-1)] != shape:
                raise TicketFileError(f"{where}: npz entry {skey!r} = {tensors[skey].tolist()} "
                                      f"disagrees with the metadata shape {shape}")

        csr = CSRMatrix(parts["indptr"], parts["indices"], parts["values"], tuple(shape))
        csr.validate(name)  # CSRError naming the layer
        for field_name, actual in (("nnz", csr.nnz),
                                   ("indptr_dtype", _DTYPE_NAMES[csr.indptr.dtype]),
                                   ("index_dtype", _DTYPE_NAMES[csr.index_dtype]),
                                   ("value_dtype", _DTYPE_NAMES[csr.dtype])):
            recorded = doc.get(field_name)
            if recorded != actual:
                raise TicketFileError(f"{where}: layer {name!r}: metadata {field_name} = "
                                      f"{recorded!r} but the tensors give {actual!r}")
        bias = parts.get("bias")
        if bias is not None:
            _check_bias(name, bias, csr.n_rows, TicketFileError)
        if layers and csr.n_cols != layers[-1][1].n_rows:
            prev = layers[-1][0]
            raise TicketFileError(f"{where}: layer {name!r} takes {csr.n_cols} inputs but layer "
                                  f"{prev!r} produces {layers[-1][1].n_rows} outputs; the layers "
                                  "do not chain")
        layers.append((name, csr, bias))

    unexpected = sorted(set(tensors) - claimed)
    if unexpected:
        raise TicketFileError(f"{where}: unexpected tensors not described by the metadata: "
                              f"{', '.join(unexpected)}")
    actual_sizes = [layers[0][1].n_cols] + [csr.n_rows for _, csr, _ in layers]
    if sizes != actual_sizes:
        raise TicketFileError(f"{where}: metadata architecture sizes {sizes} disagree with the "
                              f"layers' shapes {actual_sizes}")
    return layers


# ============================================================================ loading


def load_ticket(path: str | os.PathLike, backend: str = "auto", device: str | torch.device = "cpu"):
    """Read and validate a ticket file, then build a ready-to-run `SparseMLP` on `device`.

    backend: "auto", "reference", "cpu" or "triton" (see lth_sparse.sparse.ops). The model's
    parameters keep the stored values' dtype; its input must have that dtype. The metadata
    document is attached as `model.ticket_metadata`.
    """
    from lth_sparse.sparse.nn import (
        SparseMLP,  # lazy: the ticket format needs no kernels
    )

    layers, meta = read_ticket(path)
    device = torch.device(device)
    layers = [(name, csr.to(device), bias.to(device) if bias is not None else None)
              for name, csr, bias in layers]
    model = SparseMLP.from_csr_layers(layers, activation=meta["architecture"]["activation"],
                                      backend=backend)
    model.ticket_metadata = meta
    return model
