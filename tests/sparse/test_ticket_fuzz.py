"""Property-based: random corruptions of a valid ticket file (bit flips, truncations, header and
metadata JSON edits, size lies in shapes / nnz / data_offsets / dtypes, npz member rewrites).

The property: read_ticket either raises TicketFileError or CSRError (nothing else: no
MemoryError, RuntimeError, KeyError, BadZipFile, numpy ValueError...), or returns exactly the
tensors that were saved (a flip in free-text provenance such as created_by.time is not
checksummed and is harmless). Every example runs under an address-space cap (RLIMIT_AS) so
allocating what a file merely claims fails the test instead of swapping the machine, and
under hypothesis' per-example deadline as a hang guard."""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from numpy.lib import format as npy

from lth_sparse.errors import CSRError, TicketFileError
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.ticket_file import read_ticket, save_ticket
from tests.memory_guard import address_space_limit


def _layers():
    g = torch.Generator().manual_seed(7)
    out = []
    for i, (n_in, n_out) in enumerate(((9, 6), (6, 4), (4, 3))):
        w = torch.randn(n_out, n_in, generator=g)
        keep = torch.rand(n_out, n_in, generator=g) < 0.5
        keep[0] = False  # an empty row
        out.append((f"fc{i + 1}", CSRMatrix.from_dense(w, keep, name=f"fc{i + 1}"),
                    torch.randn(n_out, generator=g) if i != 1 else None))
    return out


LAYERS = _layers()
_DIR = Path(tempfile.mkdtemp(prefix="lth_sparse_fuzz_"))


def _good_bytes(fmt: str, compressed: bool = False) -> bytes:
    path = _DIR / f"good.{fmt}"
    save_ticket(path, LAYERS, fmt=fmt)
    data = path.read_bytes()
    if compressed:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as src, \
                zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
        data = out.getvalue()
    return data


GOOD = {"safetensors": _good_bytes("safetensors"), "npz": _good_bytes("npz"),
        "npz-deflated": _good_bytes("npz", compressed=True)}


def _assert_rejected_or_intact(data: bytes) -> None:
    path = _DIR / f"case-{os.getpid()}"
    path.write_bytes(data)
    with address_space_limit():
        try:
            layers, _ = read_ticket(path)
        except (TicketFileError, CSRError) as exc:
            assert str(exc)  # a message naming the problem
            return
    # accepted: then it must be exactly what was saved
    assert [n for n, _, _ in layers] == [n for n, _, _ in LAYERS]
    for (_, a, ab), (_, b, bb) in zip(LAYERS, layers):
        assert a.shape == b.shape
        for part in ("indptr", "indices", "values"):
            x, y = getattr(a, part), getattr(b, part)
            assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8))
        assert (ab is None) == (bb is None)
        if ab is not None:
            assert torch.equal(ab, bb)


containers = st.sampled_from(sorted(GOOD))


@given(kind=containers, data=st.data())
def test_bit_flips(kind, data):
    raw = bytearray(GOOD[kind])
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    _assert_rejected_or_intact(bytes(raw))


@given(kind=containers, data=st.data())
def test_truncations_and_appends(kind, data):
    raw = GOOD[kind]
    cut = data.draw(st.integers(0, len(raw) - 1))
    tail = data.draw(st.binary(max_size=64))
    _assert_rejected_or_intact(raw[:cut] + tail)


# ---------------------------------------------------------------------------- JSON edits

_huge = st.one_of(st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 2**31, 2**32, 2**50,
                                                                2**63, 65536, 65537]))
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), _huge, st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)
_shape_lies = st.lists(_huge, min_size=0, max_size=3)


def _paths(obj, prefix=()):
    """Every (path) to a value inside a JSON document."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(doc, path, value):
    for k in path[:-1]:
        doc = doc[k]
    if value is _DELETE:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


_DELETE = object()


def _edit(doc, data):
    """One random edit of a JSON document: replace a value (often with a size lie) or delete."""
    paths = [p for p in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    if data.draw(st.booleans()) and isinstance(path[-1], str):
        value = _DELETE
    else:
        value = data.draw(st.one_of(_json_values, _shape_lies, _huge,
                                    st.sampled_from(["U16", "I32", "I64", "F64", "BF16", "U8",
                                                     "uint16", "int64", "bfloat16", "float64"])))
    try:
        _set(doc, path, value)
    except (KeyError, IndexError, TypeError):
        pass


def _safetensors_parts(raw: bytes):
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _safetensors_bytes(header, body) -> bytes:
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + body


@given(data=st.data(), edits=st.integers(1, 3))
def test_safetensors_header_edits(data, edits):
    header, body = _safetensors_parts(GOOD["safetensors"])
    for _ in range(edits):
        _edit(header, data)
    _assert_rejected_or_intact(_safetensors_bytes(header, body))


@given(data=st.data(), edits=st.integers(1, 3))
def test_ticket_metadata_edits(data, edits):
    # the lth_sparse JSON document inside the safetensors metadata (checksums left stale or not)
    header, body = _safetensors_parts(GOOD["safetensors"])
    meta = json.loads(header["__metadata__"]["lth_sparse"])
    for _ in range(edits):
        _edit(meta, data)
    header["__metadata__"]["lth_sparse"] = json.dumps(meta)
    _assert_rejected_or_intact(_safetensors_bytes(header, body))


# ---------------------------------------------------------------------------- npz members

_npy_dtypes = st.sampled_from(["<u2", "<i4", "<i8", "<f2", "<f4", "<f8", ">f4", "|u1", "<c8",
                               "|b1", "<U4", "|O", "|V8"])


@given(data=st.data(), deflate=st.booleans())
def test_npz_member_rewrites(data, deflate):
    with zipfile.ZipFile(io.BytesIO(GOOD["npz"])) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    name = data.draw(st.sampled_from(sorted(members)))
    header = io.BytesIO()
    shape = tuple(data.draw(st.lists(st.one_of(st.integers(0, 40), st.sampled_from(
        [2**31, 2**32, 2**50, 2**62])), max_size=2)))
    npy.write_array_header_1_0(header, {"descr": data.draw(_npy_dtypes),
                                        "fortran_order": data.draw(st.booleans()),
                                        "shape": shape})
    payload = data.draw(st.one_of(st.just(members[name][len(header.getvalue()):]),
                                  st.binary(max_size=256)))
    members[name] = header.getvalue() + payload
    if data.draw(st.booleans()):
        members.pop(data.draw(st.sampled_from(sorted(members))))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as z:
        for member, blob in members.items():
            z.writestr(member, blob)
    _assert_rejected_or_intact(out.getvalue())


def test_the_unmodified_files_are_accepted():
    # the baseline every property above perturbs
    for raw in GOOD.values():
        _assert_rejected_or_intact(raw)
        path = _DIR / "baseline"
        path.write_bytes(raw)
        assert len(read_ticket(path)[0]) == 3


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    for p in _DIR.iterdir():
        p.unlink()
    _DIR.rmdir()
