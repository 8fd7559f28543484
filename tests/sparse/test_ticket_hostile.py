"""Hostile ticket files: each one is rejected with one clear error, before anything it merely
claims is allocated (shape bombs, npz/zip bombs, header lies), and limits can be raised for
genuinely large tickets. Random corruptions are in test_ticket_fuzz.py."""
from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import format as npy

from lth_sparse.errors import ConfigError, CSRError, TicketFileError
from lth_sparse.sparse import ticket_file as ticket_mod
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.ticket_file import (
    LIMITS_ENV,
    MAX_LAYER_DIM,
    TicketLimits,
    load_ticket,
    read_ticket,
    save_ticket,
)
from tests.memory_guard import address_space_limit


def _layers(names=("fc1", "fc2"), sizes=(6, 5, 3)):
    g = torch.Generator().manual_seed(0)
    out = []
    for name, n_in, n_out in zip(names, sizes[:-1], sizes[1:]):
        w = torch.randn(n_out, n_in, generator=g)
        out.append((name, CSRMatrix.from_dense(w, torch.rand(n_out, n_in, generator=g) < 0.5,
                                               name=name), torch.randn(n_out, generator=g)))
    return out


def _st_parts(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def _st_write(path: Path, header: dict, body: bytes) -> Path:
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + body)
    return path


def _edit_meta(path: Path, edit) -> Path:
    """Apply edit(meta) to a safetensors ticket's JSON document (checksums left alone)."""
    header, body = _st_parts(path)
    meta = json.loads(header["__metadata__"]["lth_sparse"])
    edit(meta)
    header["__metadata__"]["lth_sparse"] = json.dumps(meta)
    return _st_write(path, header, body)


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    save_ticket(path, _layers())
    return path


@pytest.fixture
def good_npz(tmp_path) -> Path:
    path = tmp_path / "good.npz"
    save_ticket(path, _layers(), fmt="npz")
    return path


def _rewrite_npz(src: Path, dst: Path, replace: dict[str, bytes] | None = None,
                 compression=zipfile.ZIP_STORED, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    members.update(replace or {})
    with zipfile.ZipFile(dst, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return dst


def _npy_header_only(dtype: str, shape: tuple) -> bytes:
    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


# ============================================================================ shape bombs


@pytest.mark.parametrize("n_cols", [2**50, 2**32, MAX_LAYER_DIM + 1])
def test_shape_bomb_is_rejected_before_allocating(tmp_path, n_cols):
    # a layer (1, n_cols) with nnz 0 is a ~1 KB file; building its transpose would allocate
    # n_cols + 1 int64s
    path = tmp_path / "bomb.safetensors"
    csr = CSRMatrix(torch.zeros(2, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                    torch.zeros(0), (1, n_cols))
    header_doc = ticket_mod._metadata_document(
        [("fc1", csr, None)],
        {"fc1": {p: (f"fc1.{p}", t.dtype, t) for p, t in
                 (("indptr", csr.indptr), ("indices", csr.indices), ("values", csr.values))}},
        "relu", {}, "safetensors")
    from safetensors.torch import save_file
    save_file({"fc1.indptr": csr.indptr, "fc1.indices": csr.indices, "fc1.values": csr.values},
              str(path), metadata={"lth_sparse": json.dumps(header_doc)})
    assert path.stat().st_size < 4096
    with address_space_limit(), pytest.raises(TicketFileError, match="n_cols is .*max_layer_dim"):
        load_ticket(path, backend="reference")


def test_limits_can_be_raised_for_large_tickets(tmp_path, monkeypatch):
    n_cols = MAX_LAYER_DIM + 1
    path = tmp_path / "wide.safetensors"
    g = torch.Generator().manual_seed(1)
    cols = torch.tensor([0, n_cols - 1], dtype=torch.int32)
    csr = CSRMatrix(torch.tensor([0, 2], dtype=torch.int32), cols, torch.randn(2, generator=g),
                    (1, n_cols))
    save_ticket(path, [("fc1", csr, None)])
    with pytest.raises(TicketFileError, match="max_layer_dim"):
        read_ticket(path)
    layers, _ = read_ticket(path, limits={"max_layer_dim": n_cols})
    assert layers[0][1].shape == (1, n_cols)
    monkeypatch.setenv(LIMITS_ENV, f"max_layer_dim={n_cols}")
    assert read_ticket(path)[0][0][1].shape == (1, n_cols)
    # the keyword wins over the environment
    with pytest.raises(TicketFileError, match="max_layer_dim"):
        read_ticket(path, limits={"max_layer_dim": n_cols - 1})


@pytest.mark.parametrize("limits,match", [({"max_bytes": 5}, "unknown ticket limit"),
                                          ({"max_nnz": 0}, "positive integer"),
                                          ([1], "must be a TicketLimits")])
def test_bad_limits_are_config_errors(good, limits, match):
    with pytest.raises(ConfigError, match=match):
        read_ticket(good, limits=limits)


def test_bad_limits_env_is_a_config_error(good, monkeypatch):
    monkeypatch.setenv(LIMITS_ENV, "max_nnz=lots")
    with pytest.raises(ConfigError, match=f"{LIMITS_ENV}: max_nnz must be an integer"):
        read_ticket(good)


@pytest.mark.parametrize("field,value,match", [
    ("max_ticket_bytes", 100, "the file size is .*max_ticket_bytes"),
    ("max_header_bytes", 100, "header length is .*max_header_bytes"),
    ("max_layers", 1, "number of tensors is .*max_layers"),
    ("max_nnz", 1, "nnz is .*max_nnz"),
])
def test_each_limit_is_enforced_with_a_named_error(good, field, value, match):
    with pytest.raises(TicketFileError, match=match):
        read_ticket(good, limits=TicketLimits(**{field: value}))


def test_file_size_is_checked_before_reading(good, monkeypatch):
    reads = []

    class SpyReader(io.BufferedReader):
        def read(self, *a):
            reads.append(a)
            return super().read(*a)

        def readinto(self, b):
            reads.append(len(b))
            return super().readinto(b)

    monkeypatch.setattr(ticket_mod, "open", lambda p, mode: SpyReader(io.FileIO(p, "r")),
                        raising=False)
    with pytest.raises(TicketFileError, match="max_ticket_bytes"):
        read_ticket(good, limits={"max_ticket_bytes": 10})
    assert reads == []  # rejected from fstat alone
    read_ticket(good)
    assert reads  # the spy does see reads


def test_header_length_bomb(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes((2**60).to_bytes(8, "little") + b'{"a": 1}')
    with pytest.raises(TicketFileError, match="max_header_bytes"):
        read_ticket(path)


def test_tensor_header_claiming_more_bytes_than_present(good):
    header, body = _st_parts(good)
    key = "fc1.values"
    header[key]["shape"] = [2**50]
    _st_write(good, header, body)
    with pytest.raises(TicketFileError, match=f"corrupt safetensors header entry for '{key}'"):
        read_ticket(good)


def test_overlapping_or_gapped_tensors(good):
    header, body = _st_parts(good)
    a, b = header["fc1.values"]["data_offsets"]
    header["fc1.values"]["data_offsets"] = [a + 4, b + 4]
    _st_write(good, header, body + b"\0" * 4)
    with pytest.raises(TicketFileError, match="starts at data byte"):
        read_ticket(good)


def test_trailing_bytes_after_the_last_tensor(good):
    good.write_bytes(good.read_bytes() + b"\0" * 16)
    with pytest.raises(TicketFileError, match="16 bytes after its last tensor"):
        read_ticket(good)


@pytest.mark.parametrize("doc", ["[" * 100_000, '{"format": ' + "9" * 10_000 + "}"])
def test_pathological_json_metadata(good, doc):
    header, body = _st_parts(good)
    header["__metadata__"]["lth_sparse"] = doc
    _st_write(good, header, body)
    with pytest.raises(TicketFileError, match="corrupt ticket metadata"):
        read_ticket(good)


def test_nnz_larger_than_the_matrix(good):
    _edit_meta(good, lambda m: m["layers"]["fc1"].__setitem__("nnz", 10**30))
    with pytest.raises(TicketFileError, match=r"claims nnz = 10{30}, outside"):
        read_ticket(good)


# ============================================================================ npz bombs


def test_npz_member_header_claiming_2_to_50_elements(tmp_path, good_npz):
    bomb = _rewrite_npz(good_npz, tmp_path / "bomb.npz",
                        {"fc1.indices.npy": _npy_header_only("<u2", (2**50,))})
    with address_space_limit(), pytest.raises(TicketFileError, match="claims shape .* but holds"):
        read_ticket(bomb)


def test_npz_compressed_members_are_read(tmp_path, good_npz):
    small = _rewrite_npz(good_npz, tmp_path / "c.npz", compression=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(small) as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    a, _ = read_ticket(small)
    b, _ = read_ticket(good_npz)
    assert all(torch.equal(x[1].values, y[1].values) for x, y in zip(a, b))


def test_npz_zip_bomb_is_rejected_from_the_zip_headers(tmp_path, good_npz):
    # 64 MiB of zeros deflate to ~64 KB: rejected from ZipInfo.file_size, never inflated
    zeros = _npy_header_only("<f4", (2**24,)) + bytes(2**26)
    bomb = _rewrite_npz(good_npz, tmp_path / "zip.npz", compression=zipfile.ZIP_DEFLATED,
                        extra={"junk.npy": zeros})
    assert bomb.stat().st_size < 2**20
    with pytest.raises(TicketFileError, match="uncompressed size is .*max_ticket_bytes"):
        read_ticket(bomb, limits={"max_ticket_bytes": 2**25})


def test_npz_member_whose_zip_header_understates_its_size(tmp_path, good_npz):
    forged = _rewrite_npz(good_npz, tmp_path / "lie.npz", compression=zipfile.ZIP_DEFLATED)
    data = bytearray(forged.read_bytes())
    with zipfile.ZipFile(forged) as z:
        info = z.getinfo("fc1.indptr.npy")
    # shrink the uncompressed size in the local and central headers: the npy header no longer fits
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        pos = data.find(sig)
        while pos >= 0:
            name_len = struct.unpack_from("<H", data, pos + (26 if sig == b"PK\x03\x04" else 28))[0]
            start = pos + (30 if sig == b"PK\x03\x04" else 46)
            if bytes(data[start:start + name_len]) == info.filename.encode():
                struct.pack_into("<I", data, pos + off, info.file_size - 8)
            pos = data.find(sig, pos + 4)
    forged.write_bytes(bytes(data))
    with pytest.raises(TicketFileError):
        read_ticket(forged)


@pytest.mark.parametrize("defect,match", [
    ("duplicate", "appears twice"),
    ("not_npy", "is not a .npy array"),
    ("object", "unsupported layout|corrupt npz"),
    ("big_endian", "unsupported layout"),
    ("shape_entry", r"must be int64 of shape \(2,\)"),
])
def test_npz_structural_defects(tmp_path, good_npz, defect, match):
    dst = tmp_path / "bad.npz"
    if defect == "duplicate":
        with zipfile.ZipFile(good_npz) as z:
            data = z.read("fc1.data.npy")
        import warnings
        _rewrite_npz(good_npz, dst)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
            with zipfile.ZipFile(dst, "a") as z:
                z.writestr("fc1.data.npy", data)
    elif defect == "not_npy":
        _rewrite_npz(good_npz, dst, extra={"readme.txt": b"hello"})
    elif defect == "object":
        _rewrite_npz(good_npz, dst, {"fc1.data.npy": _npy_header_only("|O", (3,)) + bytes(24)})
    elif defect == "big_endian":
        with zipfile.ZipFile(good_npz) as z:
            arr = np.load(io.BytesIO(z.read("fc1.data.npy")))
        buf = io.BytesIO()
        np.save(buf, arr.astype(">f4"))
        _rewrite_npz(good_npz, dst, {"fc1.data.npy": buf.getvalue()})
    else:
        buf = io.BytesIO()
        np.save(buf, np.array([5, 6, 7], dtype=np.int64))
        _rewrite_npz(good_npz, dst, {"fc1.shape.npy": buf.getvalue()})
    with pytest.raises(TicketFileError, match=match):
        read_ticket(dst)


def test_npz_encrypted_or_unknown_compression(tmp_path, good_npz):
    dst = _rewrite_npz(good_npz, tmp_path / "bz.npz", compression=zipfile.ZIP_BZIP2)
    with pytest.raises(TicketFileError, match="compression method 12"):
        read_ticket(dst)


# ============================================================================ layer names


@pytest.mark.parametrize("name", ["layers.0", "fc-1", "1fc", "", "x" * 65, "fc 1", "ä"])
def test_bad_layer_names_rejected_on_save_with_the_one_rule(tmp_path, name):
    layers = _layers(names=(name, "fc2"))
    with pytest.raises(ConfigError, match="letters, digits and '_', not starting with a digit, "
                                          "at most 64 characters"):
        save_ticket(tmp_path / "t.safetensors", layers)


def test_dotted_layer_name_in_a_file_rejected_on_read_with_the_same_rule(good):
    def rename(meta):
        meta["layer_order"][0] = "layers.0"
        meta["layers"]["layers.0"] = meta["layers"].pop("fc1")
    _edit_meta(good, rename)
    with pytest.raises(TicketFileError, match="layer name 'layers.0' is not allowed: use letters, "
                                              "digits and '_', not starting with a digit"):
        load_ticket(good)


def test_longest_allowed_name_round_trips(tmp_path):
    name = "L" + "_" * 62 + "9"
    path = tmp_path / "t.safetensors"
    save_ticket(path, _layers(names=(name, "fc2")))
    model = load_ticket(path, backend="reference")
    assert model.layer_names[0] == name


# ============================================================================ error types


def test_csr_invariants_still_come_from_csrmatrix_validate(tmp_path):
    # a file-level-consistent file with an out-of-range column: the CSR container rejects it
    layers = _layers()
    name, csr, bias = layers[0]
    bad = CSRMatrix(csr.indptr, torch.full_like(csr.indices, 6), csr.values, csr.shape)
    stored = {n: {p: (f"{n}.{p}", t.dtype, t) for p, t in
                  (("indptr", c.indptr), ("indices", c.indices), ("values", c.values),
                   ("bias", b))} for n, c, b in [(name, bad, bias), *layers[1:]]}
    doc = ticket_mod._metadata_document([(name, bad, bias), *layers[1:]], stored, "relu", {},
                                        "safetensors")
    from safetensors.torch import save_file
    save_file({k: t for parts in stored.values() for k, _, t in parts.values()},
              str(tmp_path / "t.safetensors"), metadata={"lth_sparse": json.dumps(doc)})
    with pytest.raises(CSRError, match="layer 'fc1': column index out of range"):
        read_ticket(tmp_path / "t.safetensors")
