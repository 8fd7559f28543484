"""Ticket files: round trips, loading into a SparseMLP, atomic writes, and a corpus of bad files.

Bad files are forged with safetensors directly. Where a test targets a check that runs after
the checksum check (CSR invariants, shapes, versions), the forged file carries correct
checksums, so each test reaches the check it targets.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.utils import prune

from lth_sparse._version import __version__
from lth_sparse.bridge.convert import csr_from_linear
from lth_sparse.errors import ConfigError, CSRError, LthSparseError, TicketFileError
from lth_sparse.lottery.models import MLP
from lth_sparse.sparse import ticket_file as ticket_mod
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.ticket_file import (
    FORMAT_NAME,
    FORMAT_VERSION,
    load_ticket,
    read_ticket,
    save_ticket,
)
from tests.helpers import TOL, fresh_seed

SIZES = (20, 12, 7, 5)  # small MLP: 20 -> 12 -> 7 -> 5


def _pruned_mlp(sizes=SIZES, amount=0.7, seed=None) -> MLP:
    seed = fresh_seed() if seed is None else seed
    model = MLP(input_size=sizes[0], hidden=tuple(sizes[1:-1]), num_classes=sizes[-1], seed=seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.normal_()  # nonzero biases so a lost bias shows up
    for layer in model.layers:
        prune.l1_unstructured(layer, "weight", amount=amount)
    return model


def _layers_of(model: MLP, **kw):
    return [(f"fc{i + 1}", csr_from_linear(lin, name=f"fc{i + 1}", **kw), lin.bias.detach())
            for i, lin in enumerate(model.layers)]


def _assert_same_layers(saved, loaded):
    assert [n for n, _, _ in saved] == [n for n, _, _ in loaded]
    for (_, a, ab), (_, b, bb) in zip(saved, loaded):
        assert a.shape == b.shape
        for part in ("indptr", "indices", "values"):
            x, y = getattr(a, part), getattr(b, part)
            assert x.dtype == y.dtype, part
            assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), part  # bitwise
        if ab is None:
            assert bb is None
        else:
            assert ab.dtype == bb.dtype and torch.equal(ab.view(torch.uint8), bb.view(torch.uint8))


# ============================================================================ round trips


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
@pytest.mark.parametrize("index_dtype,value_dtype", [("auto", None), (torch.int32, torch.bfloat16),
                                                     (torch.int64, torch.float16),
                                                     (torch.uint16, torch.float64)])
def test_save_read_round_trip_is_bitwise(tmp_path, fmt, index_dtype, value_dtype):
    layers = _layers_of(_pruned_mlp(), index_dtype=index_dtype, value_dtype=value_dtype)
    # one explicit zero inside the mask and one layer without bias
    name, csr, _ = layers[1]
    values = csr.values.clone()
    values[0] = 0
    layers[1] = (name, CSRMatrix(csr.indptr, csr.indices, values, csr.shape), None)
    path = tmp_path / f"ticket.{fmt}"
    doc = save_ticket(path, layers, metadata={"run": "abc", "round": 3, "accuracy": 0.981}, fmt=fmt)
    loaded, meta = read_ticket(path)
    _assert_same_layers(layers, loaded)
    assert meta == json.loads(json.dumps(doc))
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == FORMAT_VERSION
    assert meta["container"] == fmt
    assert meta["architecture"] == {"sizes": list(SIZES), "activation": "relu"}
    assert meta["layer_order"] == ["fc1", "fc2", "fc3"]
    assert meta["metadata"] == {"run": "abc", "round": 3, "accuracy": 0.981}
    assert meta["created_by"]["version"] == __version__
    assert meta["created_by"]["torch"] == torch.__version__
    fc1 = meta["layers"]["fc1"]
    assert fc1["shape"] == [SIZES[1], SIZES[0]] and fc1["nnz"] == layers[0][1].nnz
    assert fc1["sparsity"] == pytest.approx(layers[0][1].sparsity)
    assert len(fc1["tensors"]["values"]["sha256"]) == 64
    assert meta["layers"]["fc2"]["has_bias"] is False
    assert loaded[1][1].values[0] == 0  # the explicit zero survived


def test_default_index_dtype_is_uint16_in_the_file(tmp_path):
    path = tmp_path / "t.safetensors"
    save_ticket(path, _layers_of(_pruned_mlp()), metadata={})
    tensors = load_file(path)
    assert tensors["fc1.indices"].dtype == torch.uint16
    assert tensors["fc1.indptr"].dtype == torch.int32


@pytest.mark.cuda
def test_gpu_layers_are_saved_from_any_device(tmp_path):
    layers = [(n, c.cuda(), b.cuda()) for n, c, b in _layers_of(_pruned_mlp())]
    save_ticket(tmp_path / "t.safetensors", layers)
    loaded, _ = read_ticket(tmp_path / "t.safetensors")
    _assert_same_layers([(n, c.cpu(), b.cpu()) for n, c, b in layers], loaded)


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_load_ticket_logits_match_dense_masked_mlp(tmp_path, fmt, backend):
    model = _pruned_mlp(sizes=(784, 300, 100, 10), amount=0.9)
    path = tmp_path / f"lenet.{fmt}"
    save_ticket(path, _layers_of(model), metadata={"source": "test"}, fmt=fmt)
    sparse = load_ticket(path, backend=backend)
    x = torch.rand(33, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
        got = sparse(x)
    assert got.shape == want.shape == (33, 10)
    assert (got - want).abs().max().item() <= TOL[torch.float32]["atol"]
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert sparse.ticket_metadata["metadata"] == {"source": "test"}


@pytest.mark.cuda
def test_load_ticket_on_cuda(tmp_path):
    model = _pruned_mlp(sizes=(784, 300, 100, 10), amount=0.9)
    save_ticket(tmp_path / "t.safetensors", _layers_of(model))
    sparse = load_ticket(tmp_path / "t.safetensors", device="cuda")
    x = torch.rand(17, 784)
    with torch.no_grad():
        want = model(x)
        got = sparse(x.cuda()).cpu()
    assert (got - want).abs().max().item() <= TOL[torch.float32]["atol"]
    assert torch.equal(got.argmax(1), want.argmax(1))


def test_npz_is_readable_by_numpy_and_scipy_alone(tmp_path):
    model = _pruned_mlp()
    layers = _layers_of(model, value_dtype=torch.bfloat16)
    path = tmp_path / "ticket.npz"
    save_ticket(path, layers, fmt="npz", metadata={"round": 2})
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__lth_sparse__"]))
        assert meta["metadata"] == {"round": 2}
        for (name, csr, bias) in layers:
            w = sp.csr_matrix((z[f"{name}.data"], z[f"{name}.indices"], z[f"{name}.indptr"]),
                              shape=tuple(z[f"{name}.shape"]))
            assert w.shape == csr.shape
            np.testing.assert_array_equal(w.toarray(), csr.to_dense(torch.float32).numpy())
            np.testing.assert_array_equal(z[f"{name}.bias"], bias.numpy())
    # float32 storage of bfloat16 values is recorded and undone on read
    assert meta["layers"]["fc1"]["tensors"]["values"]["stored_dtype"] == "float32"
    loaded, _ = read_ticket(path)
    _assert_same_layers(layers, loaded)


def test_format_is_detected_from_bytes_not_suffix(tmp_path):
    layers = _layers_of(_pruned_mlp())
    save_ticket(tmp_path / "odd.bin", layers, fmt="npz")
    loaded, meta = read_ticket(tmp_path / "odd.bin")
    assert meta["container"] == "npz"
    _assert_same_layers(layers, loaded)


# ============================================================================ save-side errors


def test_save_rejects_bad_arguments(tmp_path):
    layers = _layers_of(_pruned_mlp())
    p = tmp_path / "t.safetensors"
    with pytest.raises(ConfigError, match="unknown ticket format 'zip'"):
        save_ticket(p, layers, fmt="zip")
    with pytest.raises(ConfigError, match="unsupported activation 'tanh'"):
        save_ticket(p, layers, activation="tanh")
    with pytest.raises(ConfigError, match="appears twice"):
        save_ticket(p, [layers[0], ("fc1", layers[1][1], layers[1][2]), layers[2]])
    with pytest.raises(ConfigError, match="layer name 'fc 1'"):
        save_ticket(p, [("fc 1", layers[0][1], None)])
    with pytest.raises(ConfigError, match="layer 'fc3' takes 7 inputs but layer 'fc1' produces 12 "
                                          "outputs"):
        save_ticket(p, [layers[0], layers[2]])
    with pytest.raises(ConfigError, match=r"layer 'fc1': bias must have shape \(12,\)"):
        save_ticket(p, [("fc1", layers[0][1], torch.zeros(13))])
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        save_ticket(p, layers, metadata={"x": object()})
    bad = layers[0][1]
    bad = CSRMatrix(bad.indptr, bad.indices.flip(0), bad.values, bad.shape)
    with pytest.raises(CSRError, match="layer 'fc1': column indices must be sorted"):
        save_ticket(p, [("fc1", bad, None)])
    assert not p.exists() and list(tmp_path.iterdir()) == []


# ============================================================================ atomic writes


def _write_good(path: Path, fmt="safetensors", seed=0):
    layers = _layers_of(_pruned_mlp(seed=seed))
    save_ticket(path, layers, metadata={"seed": seed}, fmt=fmt)
    return layers


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_failed_write_keeps_existing_file_and_leaves_no_temp(tmp_path, monkeypatch, fmt):
    path = tmp_path / "ticket.out"
    _write_good(path, fmt=fmt, seed=1)
    before = path.read_bytes()
    new_layers = _layers_of(_pruned_mlp(seed=2))

    def broken_fsync(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ticket_mod.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_ticket(path, new_layers, fmt=fmt)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ticket.out"]
    _, meta = read_ticket(path)
    assert meta["metadata"] == {"seed": 1}


def test_interrupted_write_midway_keeps_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "ticket.npz"
    _write_good(path, fmt="npz", seed=1)
    before = path.read_bytes()

    def half_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(ticket_mod.np, "savez", half_savez)
    with pytest.raises(KeyboardInterrupt):
        save_ticket(path, _layers_of(_pruned_mlp(seed=2)), fmt="npz")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ticket.npz"]


def test_failed_rename_keeps_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "ticket.safetensors"
    _write_good(path, seed=1)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(ticket_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_ticket(path, _layers_of(_pruned_mlp(seed=2)))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ticket.safetensors"]


def test_save_creates_parent_folder_and_replaces_existing(tmp_path):
    path = tmp_path / "deep" / "er" / "ticket.safetensors"
    _write_good(path, seed=1)
    _write_good(path, seed=2)
    assert read_ticket(path)[1]["metadata"] == {"seed": 2}


# ============================================================================ the bad-file corpus


def _forge(path: Path, layers, *, mutate=None, fix_checksums=True, activation="relu"):
    """Write a safetensors ticket of `layers` WITHOUT save_ticket's checks.

    mutate(tensors, meta) may edit the tensors dict and the metadata document before writing;
    with fix_checksums the sha256/shape/dtype records are recomputed from the final tensors.
    """
    stored = {}
    tensors = {}
    for name, csr, bias in layers:
        stored[name] = {}
        parts = {"indptr": csr.indptr, "indices": csr.indices, "values": csr.values}
        if bias is not None:
            parts["bias"] = bias
        for part, t in parts.items():
            t = t.detach().contiguous()
            stored[name][part] = (f"{name}.{part}", t.dtype, t)
            tensors[f"{name}.{part}"] = t
    # The writer's own metadata builder: these files differ from good ones only where a test says.
    meta = ticket_mod._metadata_document(layers, stored, activation, {}, "safetensors")
    if mutate is not None:
        mutate(tensors, meta)
    if fix_checksums:
        for doc in meta["layers"].values():
            for td in doc["tensors"].values():
                t = tensors.get(td["key"])
                if t is not None:
                    td["sha256"] = hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
    save_file(tensors, str(path), metadata={"lth_sparse": json.dumps(meta)})
    return path


def _csr(parts_from: CSRMatrix, **changes) -> CSRMatrix:
    f = dict(indptr=parts_from.indptr.clone(), indices=parts_from.indices.clone(),
             values=parts_from.values.clone(), shape=parts_from.shape)
    f.update(changes)
    return CSRMatrix(f["indptr"], f["indices"], f["values"], f["shape"])


def _row_with_two(csr: CSRMatrix) -> tuple[int, int]:
    """(row, first position) of a row holding at least two entries."""
    ip = csr.indptr.long()
    row = int(((ip[1:] - ip[:-1]) >= 2).nonzero()[0, 0])
    return row, int(ip[row])


@pytest.fixture
def good_layers():
    return _layers_of(_pruned_mlp(amount=0.5))


def test_forged_good_file_is_accepted(tmp_path, good_layers):
    # The forger itself produces valid files: every rejection below is due to its one defect.
    loaded, _ = read_ticket(_forge(tmp_path / "good.safetensors", good_layers))
    _assert_same_layers(good_layers, loaded)


def test_missing_file(tmp_path):
    with pytest.raises(TicketFileError, match="does not exist"):
        read_ticket(tmp_path / "nope.safetensors")
    with pytest.raises(TicketFileError, match="is a directory"):
        read_ticket(tmp_path)


@pytest.mark.parametrize("keep", [0, 5, 20, -1, -100])
def test_truncated_safetensors(tmp_path, good_layers, keep):
    path = tmp_path / "t.safetensors"
    save_ticket(path, good_layers)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    with pytest.raises(TicketFileError, match="truncated|empty|only 5 bytes"):
        read_ticket(path)


def test_truncated_npz(tmp_path, good_layers):
    path = tmp_path / "t.npz"
    save_ticket(path, good_layers, fmt="npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TicketFileError, match="truncated or corrupt npz"):
        read_ticket(path)


def test_checksum_mismatch_names_the_tensor(tmp_path, good_layers):
    def flip(tensors, meta):
        tensors["fc2.values"] = tensors["fc2.values"].clone()
        tensors["fc2.values"][3] += 1.0

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=flip, fix_checksums=False)
    with pytest.raises(TicketFileError, match="checksum mismatch for tensor 'fc2.values'"):
        read_ticket(path)


def test_flipped_byte_on_disk_is_a_checksum_mismatch(tmp_path, good_layers):
    path = tmp_path / "t.safetensors"
    save_ticket(path, good_layers)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(TicketFileError, match="checksum mismatch for tensor"):
        read_ticket(path)


def test_npz_checksum_mismatch(tmp_path, good_layers):
    path = tmp_path / "t.npz"
    save_ticket(path, good_layers, fmt="npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["fc1.data"] = arrays["fc1.data"].copy()
    arrays["fc1.data"][0] *= 2
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(TicketFileError, match="checksum mismatch for tensor 'fc1.data'"):
        read_ticket(path)


def test_unsorted_indices(tmp_path, good_layers):
    name, csr, bias = good_layers[0]
    row, j = _row_with_two(csr)
    idx = csr.indices.clone()
    idx[j], idx[j + 1] = csr.indices[j + 1], csr.indices[j]
    path = _forge(tmp_path / "t.safetensors", [(name, _csr(csr, indices=idx), bias), *good_layers[1:]])
    with pytest.raises(CSRError, match=f"layer 'fc1': column indices must be sorted within each "
                                       f"row \\(row {row} has"):
        read_ticket(path)


def test_duplicate_indices(tmp_path, good_layers):
    name, csr, bias = good_layers[1]
    row, j = _row_with_two(csr)
    idx = csr.indices.clone()
    idx[j + 1] = idx[j]
    path = _forge(tmp_path / "t.safetensors",
                  [good_layers[0], (name, _csr(csr, indices=idx), bias), good_layers[2]])
    with pytest.raises(CSRError, match=f"layer 'fc2': duplicate column index {int(idx[j])} in row {row}"):
        read_ticket(path)


def test_out_of_range_index(tmp_path, good_layers):
    name, csr, bias = good_layers[2]
    idx = csr.indices.clone()
    idx[-1] = csr.n_cols  # one past the last column (fits uint16)
    path = _forge(tmp_path / "t.safetensors", [*good_layers[:2], (name, _csr(csr, indices=idx), bias)])
    with pytest.raises(CSRError, match=f"layer 'fc3': column index out of range: "
                                       f"indices\\[{csr.nnz - 1}\\]={csr.n_cols}"):
        read_ticket(path)


def test_non_monotone_indptr(tmp_path, good_layers):
    name, csr, bias = good_layers[0]
    ip = csr.indptr.clone()
    r = 4
    ip[r + 1] = ip[r] - 1 if ip[r] > 0 else ip[r]
    if ip[r] == 0:  # make sure the row boundary decreases
        ip[r] = 2
        ip[r + 1] = 1
    path = _forge(tmp_path / "t.safetensors", [(name, _csr(csr, indptr=ip), bias), *good_layers[1:]])
    with pytest.raises(CSRError, match=r"layer 'fc1': indptr must be non-decreasing \(row \d+ has"):
        read_ticket(path)


def test_nan_value(tmp_path, good_layers):
    name, csr, bias = good_layers[1]
    vals = csr.values.clone()
    vals[2] = float("nan")
    path = _forge(tmp_path / "t.safetensors",
                  [good_layers[0], (name, _csr(csr, values=vals), bias), good_layers[2]])
    with pytest.raises(CSRError, match=r"layer 'fc2': values must be finite; 1 are not \(first: "
                                       r"values\[2\]=nan"):
        read_ticket(path)


def test_layer_chain_mismatch(tmp_path, good_layers):
    # fc2 takes 11 inputs while fc1 produces 12: each CSR is valid on its own.
    w = torch.randn(SIZES[2], SIZES[1] - 1)
    fc2 = CSRMatrix.from_dense(w * (torch.rand_like(w) < 0.5), name="fc2")
    layers = [good_layers[0], ("fc2", fc2, good_layers[1][2]), good_layers[2]]
    path = _forge(tmp_path / "t.safetensors", layers)
    with pytest.raises(TicketFileError, match="layer 'fc2' takes 11 inputs but layer 'fc1' "
                                              "produces 12 outputs"):
        read_ticket(path)


def test_bias_shape_mismatch(tmp_path, good_layers):
    name, csr, _ = good_layers[2]
    path = _forge(tmp_path / "t.safetensors", [*good_layers[:2], (name, csr, torch.zeros(csr.n_rows + 1))])
    with pytest.raises(TicketFileError, match=r"tensor 'fc3.bias' has shape \[6\]; layer 'fc3' .* needs \[5\]"):
        read_ticket(path)


def test_non_finite_bias(tmp_path, good_layers):
    name, csr, bias = good_layers[0]
    bias = bias.clone()
    bias[0] = float("inf")
    path = _forge(tmp_path / "t.safetensors", [(name, csr, bias), *good_layers[1:]])
    with pytest.raises(TicketFileError, match="layer 'fc1': bias values must be finite"):
        read_ticket(path)


def test_metadata_shape_disagrees_with_tensors(tmp_path, good_layers):
    def lie(tensors, meta):
        meta["layers"]["fc1"]["shape"] = [SIZES[1] + 1, SIZES[0]]

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=lie)
    # a size lie is caught from the headers, before any tensor is read
    with pytest.raises(TicketFileError, match=r"tensor 'fc1.indptr' has shape \[13\]; layer "
                                              r"'fc1' of shape \[13, 20\] .* needs \[14\]"):
        read_ticket(path)


def test_metadata_nnz_disagrees_with_tensors(tmp_path, good_layers):
    def lie(tensors, meta):
        meta["layers"]["fc3"]["nnz"] += 1

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=lie)
    with pytest.raises(TicketFileError, match=r"tensor 'fc3.indices' has shape \[17\]; layer "
                                              r"'fc3' .* with nnz 18 needs \[18\]"):
        read_ticket(path)


def test_metadata_architecture_disagrees(tmp_path, good_layers):
    def lie(tensors, meta):
        meta["architecture"]["sizes"] = [20, 12, 7, 6]

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=lie)
    with pytest.raises(TicketFileError, match="architecture sizes"):
        read_ticket(path)


def test_unknown_format_version(tmp_path, good_layers):
    def future(tensors, meta):
        meta["format_version"] = 2

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=future)
    with pytest.raises(TicketFileError, match=f"ticket format version 2; this lth_sparse "
                                              f"\\({__version__}\\) reads format version 1 only"):
        read_ticket(path)


def test_unknown_activation(tmp_path, good_layers):
    path = _forge(tmp_path / "t.safetensors", good_layers, activation="gelu")
    with pytest.raises(TicketFileError, match="unsupported activation 'gelu'"):
        read_ticket(path)


def test_missing_tensor(tmp_path, good_layers):
    def drop(tensors, meta):
        del tensors["fc3.indices"]

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=drop)
    with pytest.raises(TicketFileError, match=r"tensor 'fc3.indices' \(layer 'fc3' indices\) is "
                                              r"missing"):
        read_ticket(path)


def test_unexpected_tensor(tmp_path, good_layers):
    def extra(tensors, meta):
        tensors["fc9.values"] = torch.ones(3)

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=extra)
    with pytest.raises(TicketFileError, match="unexpected tensors not described by the metadata: "
                                              "fc9.values"):
        read_ticket(path)


def test_stored_dtype_disagrees(tmp_path, good_layers):
    def widen(tensors, meta):
        tensors["fc1.indices"] = tensors["fc1.indices"].to(torch.int32)

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=widen)
    with pytest.raises(TicketFileError, match="tensor 'fc1.indices' is stored as int32 but the "
                                              "metadata says uint16"):
        read_ticket(path)


def test_missing_metadata_field(tmp_path, good_layers):
    def drop(tensors, meta):
        del meta["layers"]["fc2"]["shape"]

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=drop)
    with pytest.raises(TicketFileError, match="metadata field 'layers.fc2.shape' is missing"):
        read_ticket(path)


@pytest.mark.parametrize("content", [b"", b"hello, I am a text file\n", bytes(range(256)) * 4,
                                     b"\x00" * 64])
def test_not_a_ticket_at_all(tmp_path, content):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(TicketFileError, match="not an lth_sparse ticket|empty"):
        read_ticket(path)


def test_plain_safetensors_file_is_not_a_ticket(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(3, 3)}, str(path))
    with pytest.raises(TicketFileError, match="not an lth_sparse ticket file \\(a safetensors file "
                                              "without the 'lth_sparse' metadata\\)"):
        read_ticket(path)
    save_file({"weight": torch.ones(3, 3)}, str(path), metadata={"lth_sparse": json.dumps({"format": "other"})})
    with pytest.raises(TicketFileError, match="format is 'other'"):
        read_ticket(path)
    save_file({"weight": torch.ones(3, 3)}, str(path), metadata={"lth_sparse": "{not json"})
    with pytest.raises(TicketFileError, match="not valid JSON"):
        read_ticket(path)


def test_plain_npz_is_not_a_ticket(tmp_path):
    path = tmp_path / "m.npz"
    sp.save_npz(path, sp.random(4, 5, density=0.5, format="csr"))
    with pytest.raises(TicketFileError, match="not an lth_sparse ticket"):
        read_ticket(path)


def test_load_ticket_never_builds_from_a_bad_file(tmp_path, good_layers):
    def future(tensors, meta):
        meta["format_version"] = 99

    path = _forge(tmp_path / "t.safetensors", good_layers, mutate=future)
    with pytest.raises(TicketFileError, match="version 99"):
        load_ticket(path)


def test_all_ticket_errors_are_user_errors():
    # The CLI turns LthSparseError into exit code 2 and a one-line message.
    assert issubclass(TicketFileError, LthSparseError) and issubclass(CSRError, LthSparseError)
    assert issubclass(ConfigError, LthSparseError)


def test_safetensors_metadata_is_a_single_json_key(tmp_path, good_layers):
    path = tmp_path / "t.safetensors"
    save_ticket(path, good_layers, metadata={"accuracy": 0.98})
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        keys = set(f.keys())
    assert set(md) == {"lth_sparse"}
    assert json.loads(md["lth_sparse"])["metadata"] == {"accuracy": 0.98}
    assert keys == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("indptr", "indices", "values", "bias")}
    assert os.path.getsize(path) > 0
