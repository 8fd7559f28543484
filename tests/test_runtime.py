"""The Python-free runtime (csrc/runtime): liblth_ticket, lth-sparse-run and the C example.

The runtime is built once per session with CMake (no Python in it: -DLTH_SPARSE_PYTHON=OFF)
into build/runtime-pytest (incremental across sessions; LTH_SPARSE_RUNTIME_BUILD moves it).
Its tests skip only when CMake or a C/C++ compiler is missing, and never under
LTH_SPARSE_REQUIRE_BACKENDS=1 (CI), where a missing toolchain is a failure.

What is checked:
- logits of the C runtime equal Python's (load_ticket) on the 10,000 MNIST test images, for
  float32 input and for raw uint8 images preprocessed by the runtime from the ticket metadata;
  the C example classifies them with exactly Python's number of correct predictions;
- fp16 / bf16 / fp64 values and int32 / int64 indices are converted as Python reads them;
- the bad-ticket corpus of tests/sparse/test_ticket_file.py plus hostile sizes (shape bomb,
  huge header and offsets, deep JSON), each through the CLI: exit 2 with one line naming the
  problem, never a signal;
- the C API contract in C (tests/api_test.c: argument errors, NaN-prefilled outputs, several
  threads on one handle), the CLI's .npy handling and --bench's JSON lines;
- `cmake --install`, then a consumer built against the installed library with pkg-config
  and with find_package(lth_ticket).
- With LTH_SPARSE_RUNTIME_SANITIZE=1 (off by default: a debug build takes minutes on two
  cores), an ASan + UBSan build runs the corpus and the API test.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.nn.utils import prune

from lth_sparse.bridge.convert import csr_from_linear
from lth_sparse.lottery.data import STATS, load_dataset
from lth_sparse.lottery.models import MLP
from lth_sparse.sparse.csr import CSRMatrix
from lth_sparse.sparse.ticket_file import load_ticket, read_ticket, save_ticket
from tests.helpers import RUNTIME_ATOL, TOL, fresh_seed
from tests.sparse.test_ticket_file import SIZES, _csr, _forge, _layers_of, _pruned_mlp, _row_with_two

REPO = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("LTH_SPARSE_REQUIRE_BACKENDS") == "1"
# A run that takes longer than this has hung: the runtime must answer any file at once.
HANG_S = 120


# ============================================================================ building


def _toolchain() -> tuple[str | None, str]:
    """(cmake executable or None, reason when missing)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        try:
            import cmake as cmake_pkg  # the PyPI wheel the Makefile installs
            cmake = str(Path(cmake_pkg.CMAKE_BIN_DIR) / "cmake")
        except ImportError:
            return None, "cmake not found (install it: `pip install cmake` or apt-get install cmake)"
    for tools in (("c++", "g++", "clang++"), ("cc", "gcc", "clang")):
        if not any(shutil.which(t) for t in tools):
            return None, f"no {tools[0]} compiler found"
    return cmake, ""


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=HANG_S * 5, **kw)


@dataclass
class Runtime:
    build: Path

    def tool(self, name: str) -> Path:
        return self.build / "csrc" / "runtime" / name

    def cli(self, *args, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.tool("lth-sparse-run")), *map(str, args)], capture_output=True,
                              text=True, timeout=HANG_S, **kw)
        # A negative code is a signal (crash, abort, sanitizer): never acceptable.
        assert proc.returncode >= 0, f"lth-sparse-run died of signal {-proc.returncode}: {proc.stderr}"
        return proc


def _build_runtime(build: Path, *extra: str) -> Runtime:
    cmake, why = _toolchain()
    if cmake is None:
        if REQUIRE:
            pytest.fail(f"LTH_SPARSE_REQUIRE_BACKENDS=1 but the C runtime cannot be built: {why}")
        pytest.skip(why)
    configure = _run([cmake, "-S", REPO, "-B", build, "-DLTH_SPARSE_PYTHON=OFF",
                      "-DLTH_SPARSE_RUNTIME=ON", *extra])
    if configure.returncode != 0:
        pytest.fail("configuring the C runtime failed (missing libssl-dev or nlohmann-json3-dev? "
                    "`make setup` installs them):\n" + configure.stdout[-3000:] + configure.stderr[-3000:])
    built = _run([cmake, "--build", build, "--parallel", "2"])
    if built.returncode != 0:
        pytest.fail("building the C runtime failed:\n" + built.stdout[-4000:] + built.stderr[-4000:])
    return Runtime(build)


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    build = Path(os.environ.get("LTH_SPARSE_RUNTIME_BUILD", REPO / "build" / "runtime-pytest"))
    return _build_runtime(build, "-DCMAKE_BUILD_TYPE=Release")


def _one_line_error(proc, pattern: str) -> str:
    """The CLI's failure: exit 2 and exactly one stderr line matching `pattern`."""
    import re

    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]


# ============================================================================ MNIST: C == Python


def _idx_images(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    assert magic == 2051
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


@pytest.fixture(scope="module")
def mnist_ticket(mnist_dir, tmp_path_factory):
    """A LeNet-300-100 briefly trained on MNIST (normalised input), pruned to 10% of its
    weights (output layer 20%), exported with the preprocessing `lth-sparse export` records.
    Returns (ticket path, Python logits on the test set, test labels)."""
    data = load_dataset("mnist", mnist_dir, normalize=True, download=False)
    model = MLP(input_size=784, hidden=(300, 100), num_classes=10, seed=fresh_seed())
    opt = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    g = torch.Generator().manual_seed(fresh_seed())
    for _ in range(300):
        idx = torch.randint(len(data.train.images), (60,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(data.train.images[idx]), data.train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for i, layer in enumerate(model.layers):
        prune.l1_unstructured(layer, "weight", amount=0.8 if i == 2 else 0.9)
    mean, std = STATS["mnist"]
    path = tmp_path_factory.mktemp("mnist_ticket") / "lenet.safetensors"
    save_ticket(path, _layers_of(model), metadata={
        "input": {"flatten": 784, "scale": 1 / 255, "normalize": {"mean": mean, "std": std}}})
    with torch.no_grad():
        logits = load_ticket(path)(data.test.images)
    return path, data.test.images, logits, data.test.labels


@pytest.mark.mnist
def test_c_logits_equal_python_on_mnist_float_and_uint8_input(runtime, mnist_ticket, mnist_dir, tmp_path):
    path, images, want, _ = mnist_ticket
    np.save(tmp_path / "x.npy", images.numpy())
    raw = _idx_images(mnist_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    np.save(tmp_path / "raw.npy", raw)  # (10000, 28, 28) uint8: the runtime preprocesses
    for name in ("x.npy", "raw.npy"):
        proc = runtime.cli(path, "--input", tmp_path / name, "--output", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        got = torch.from_numpy(np.load(tmp_path / "y.npy"))
        assert got.shape == want.shape == (10000, 10)
        assert (got - want).abs().max().item() <= RUNTIME_ATOL, name
        assert torch.equal(got.argmax(1), want.argmax(1)), name


@pytest.mark.mnist
def test_c_example_classifies_mnist_like_python(runtime, mnist_ticket, mnist_dir):
    path, _, logits, labels = mnist_ticket
    raw = mnist_dir / "MNIST" / "raw"
    proc = subprocess.run([str(runtime.tool("classify_mnist")), str(path),
                           str(raw / "t10k-images-idx3-ubyte"), str(raw / "t10k-labels-idx1-ubyte")],
                          capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stderr
    correct = int((logits.argmax(1) == labels).sum())
    assert correct > 5000  # far above chance: the model and its preprocessing are real
    assert f"({correct}/10000 correct)" in proc.stdout, proc.stdout


# ============================================================================ dtypes and shapes


@pytest.mark.parametrize("index_dtype,value_dtype", [
    (torch.int32, torch.float32), (torch.int64, torch.float16), ("auto", torch.bfloat16),
    (torch.int32, torch.float64)])
def test_stored_dtypes_are_read_as_python_reads_them(runtime, tmp_path, index_dtype, value_dtype):
    model = _pruned_mlp(sizes=(37, 19, 1, 6), amount=0.6)
    layers = _layers_of(model, index_dtype=index_dtype, value_dtype=value_dtype)
    name, csr, _ = layers[1]
    layers[1] = (name, csr, None)  # one layer without bias
    path = tmp_path / "t.safetensors"
    save_ticket(path, layers)
    x = torch.randn(23, 37)
    with torch.no_grad():
        # Python's model computes in the stored dtype; compare in float64 against what the
        # runtime computes in fp32 from the same (exactly widened) numbers.
        ref = [(n, CSRMatrix(c.indptr, c.indices, c.values.double(), c.shape), b)
               for n, c, b in read_ticket(path)[0]]
        h = x.double()
        for i, (_, c, b) in enumerate(ref):
            h = h @ c.to_dense(torch.float64).T + (b.double() if b is not None else 0)
            if i + 1 < len(ref):
                h = h.clamp_min(0)
    np.save(tmp_path / "x.npy", x.numpy())
    proc = runtime.cli(path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert proc.returncode == 0, proc.stderr
    got = torch.from_numpy(np.load(tmp_path / "y.npy")).double()
    tol = TOL[torch.float32]
    assert torch.allclose(got, h, rtol=tol["rtol"], atol=tol["atol"])


def test_awkward_shapes_empty_rows_nnz0_1x1_batch0(runtime, tmp_path):
    # fc1 has empty rows and columns, fc2 stores nothing (output = its bias), fc3 is 1x1.
    w1 = torch.randn(5, 4) * (torch.rand(5, 4) < 0.5)
    w1[2] = 0
    w1[:, 1] = 0
    layers = [("fc1", CSRMatrix.from_dense(w1, name="fc1"), torch.randn(5)),
              ("fc2", CSRMatrix.from_dense(torch.zeros(1, 5), name="fc2"), torch.randn(1)),
              ("fc3", CSRMatrix.from_dense(torch.full((1, 1), -2.5), name="fc3"), None)]
    assert layers[1][1].nnz == 0
    path = tmp_path / "t.safetensors"
    save_ticket(path, layers)
    for batch in (0, 1, 9):
        x = torch.randn(batch, 4)
        np.save(tmp_path / "x.npy", x.numpy())
        proc = runtime.cli(path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
        assert proc.returncode == 0, proc.stderr
        got = torch.from_numpy(np.load(tmp_path / "y.npy"))
        with torch.no_grad():
            want = load_ticket(path, backend="reference")(x)
        assert got.shape == (batch, 1)
        assert torch.allclose(got, want, **TOL[torch.float32])


def test_info_and_metadata(runtime, tmp_path):
    path = tmp_path / "t.safetensors"
    save_ticket(path, _layers_of(_pruned_mlp()), metadata={"run": "abc"})
    proc = runtime.cli(path, "--info")
    assert proc.returncode == 0, proc.stderr
    assert "architecture: 20 -> 12 -> 7 -> 5" in proc.stdout
    _, meta = read_ticket(path)
    assert f"totals: nnz {meta['totals']['nnz']} of {meta['totals']['weights']} weights" in proc.stdout
    assert "no preprocessing" in proc.stdout
    proc = runtime.cli(path, "--metadata")
    assert proc.returncode == 0 and json.loads(proc.stdout) == meta


# ============================================================================ the bad-file corpus


@pytest.fixture
def good_layers():
    return _layers_of(_pruned_mlp(amount=0.5))


def _truncated(keep):
    def make(path, layers):
        save_ticket(path, layers)
        data = path.read_bytes()
        path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    return make


def _mutated(mutate, fix_checksums=True):
    return lambda path, layers: _forge(path, layers, mutate=mutate, fix_checksums=fix_checksums)


def _with_layer(i, **changes):
    """Replace layer i's CSR parts (a function of the CSR) and forge the file."""
    def make(path, layers):
        name, csr, bias = layers[i]
        parts = {k: f(csr) for k, f in changes.items()}
        bias = parts.pop("bias", bias)
        layers = list(layers)
        layers[i] = (name, _csr(csr, **parts), bias)
        _forge(path, layers)
    return make


def _swap_pair(csr):
    _, j = _row_with_two(csr)
    idx = csr.indices.clone()
    idx[j], idx[j + 1] = csr.indices[j + 1], csr.indices[j]
    return idx


def _dup_pair(csr):
    _, j = _row_with_two(csr)
    idx = csr.indices.clone()
    idx[j + 1] = idx[j]
    return idx


def _out_of_range(csr):
    idx = csr.indices.clone()
    idx[-1] = csr.n_cols
    return idx


def _decreasing_indptr(csr):
    ip = csr.indptr.clone()
    assert ip[2] > 0
    ip[3] = ip[2] - 1
    return ip


def _nan_value(csr):
    v = csr.values.clone()
    v[2] = float("nan")
    return v


def _inf_bias(csr):
    b = torch.randn(csr.n_rows)
    b[0] = float("inf")
    return b


def _flip_last_byte(path, layers):
    save_ticket(path, layers)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))


def _bytes(content):
    return lambda path, layers: path.write_bytes(content)


def _chain_mismatch(path, layers):
    w = torch.randn(SIZES[2], SIZES[1] - 1)
    fc2 = CSRMatrix.from_dense(w * (torch.rand_like(w) < 0.5), name="fc2")
    _forge(path, [layers[0], ("fc2", fc2, layers[1][2]), layers[2]])


def _bias_shape(path, layers):
    name, csr, _ = layers[2]
    _forge(path, [*layers[:2], (name, csr, torch.zeros(csr.n_rows + 1))])


def _plain_safetensors(metadata):
    return lambda path, layers: save_file({"weight": torch.ones(3, 3)}, str(path), metadata=metadata)


def _npz_ticket(path, layers):
    save_ticket(path, layers, fmt="npz")


def _shape_bomb(path, layers):
    # Valid CSR of shape (1, 2**50) storing nothing: a runtime that sized anything by n_cols
    # would try to allocate petabytes.
    bomb = CSRMatrix(torch.zeros(2, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                     torch.zeros(0), (1, 2**50))
    _forge(path, [("fc1", bomb, None)])


def _row_bomb(path, layers):
    # The metadata claims 2**40 rows; the file holds 13 row pointers.
    def lie(tensors, meta):
        meta["layers"]["fc1"]["shape"] = [2**40, SIZES[0]]
    _forge(path, layers, mutate=lie)


def _header_len(value):
    def make(path, layers):
        save_ticket(path, layers)
        data = path.read_bytes()
        path.write_bytes(struct.pack("<Q", value) + data[8:])
    return make


def _raw_header(header: dict, body: bytes = b""):
    def make(path, layers):
        text = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    return make


def _ticket_meta_header(**entries):
    meta = {"format": "lth_sparse.ticket", "format_version": 1}
    return {"__metadata__": {"lth_sparse": json.dumps(meta)}, **entries}


def _deep_json(path, layers):
    text = b"{\"a\": " + b"[" * 100000 + b"]" * 100000 + b"}"
    path.write_bytes(struct.pack("<Q", len(text)) + text)


def _set(keys, value):
    def mutate(tensors, meta):
        d = meta
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return mutate


def _delete(keys, tensor=None):
    def mutate(tensors, meta):
        if tensor:
            del tensors[tensor]
            return
        d = meta
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return mutate


def _widen_indices(tensors, meta):
    tensors["fc1.indices"] = tensors["fc1.indices"].to(torch.int32)


def _extra_tensor(tensors, meta):
    tensors["fc9.values"] = torch.ones(3)


def _flip_value(tensors, meta):
    tensors["fc2.values"] = tensors["fc2.values"].clone()
    tensors["fc2.values"][3] += 1.0


def _gelu(path, layers):
    _forge(path, layers, activation="gelu")


# (case id, how to make the file, the message the runtime must give)
CORPUS = [
    ("empty", _truncated(0), r"is empty \(0 bytes\)"),
    ("five-bytes", _truncated(5), r"only 5 bytes"),
    ("truncated-header", _truncated(20), r"is truncated: its safetensors header needs"),
    ("truncated-last-byte", _truncated(-1), r"is truncated: its tensors need \d+ data bytes"),
    ("truncated-100", _truncated(-100), r"is truncated"),
    ("checksum-mismatch", _mutated(_flip_value, fix_checksums=False),
     r"checksum mismatch for tensor 'fc2.values'"),
    ("flipped-byte", _flip_last_byte, r"checksum mismatch for tensor"),
    ("unsorted-indices", _with_layer(0, indices=_swap_pair),
     r"layer 'fc1': column indices must be sorted within each row \(row \d+ has"),
    ("duplicate-indices", _with_layer(1, indices=_dup_pair),
     r"layer 'fc2': duplicate column index \d+ in row \d+"),
    ("out-of-range-index", _with_layer(2, indices=_out_of_range),
     r"layer 'fc3': column index out of range: indices\[\d+\]=7 in row \d+ is outside \[0, 7\)"),
    ("non-monotone-indptr", _with_layer(0, indptr=_decreasing_indptr),
     r"layer 'fc1': indptr must be non-decreasing \(row 2 has indptr\[3\]=\d+ < indptr\[2\]=\d+\)"),
    ("nan-value", _with_layer(1, values=_nan_value),
     r"layer 'fc2': values must be finite; 1 are not \(first: values\[2\]=nan"),
    ("inf-bias", _with_layer(0, bias=_inf_bias), r"layer 'fc1': bias values must be finite"),
    ("chain-mismatch", _chain_mismatch,
     r"layer 'fc2' takes 11 inputs but layer 'fc1' produces 12 outputs"),
    ("bias-shape", _bias_shape, r"layer 'fc3': bias must have shape \(5,\)"),
    ("metadata-shape", _mutated(_set(["layers", "fc1", "shape"], [SIZES[1] + 1, SIZES[0]])),
     r"layer 'fc1': len\(indptr\) must be n_rows \+ 1"),
    ("metadata-nnz", _mutated(lambda t, m: m["layers"]["fc3"].update(nnz=m["layers"]["fc3"]["nnz"] + 1)),
     r"layer 'fc3': metadata nnz"),
    ("architecture-sizes", _mutated(_set(["architecture", "sizes"], [20, 12, 7, 6])),
     r"architecture sizes \[20,12,7,6\] disagree"),
    ("unknown-version", _mutated(_set(["format_version"], 2)),
     r"ticket format version 2; this runtime \(lth_ticket [^)]+\) reads format version 1 only"),
    ("unknown-activation", _gelu, r"unsupported activation 'gelu'"),
    ("missing-tensor", _mutated(_delete(None, tensor="fc3.indices")),
     r"tensor 'fc3.indices' \(layer 'fc3' indices\) is missing"),
    ("unexpected-tensor", _mutated(_extra_tensor),
     r"unexpected tensors not described by the metadata: fc9.values"),
    ("stored-dtype", _mutated(_widen_indices),
     r"tensor 'fc1.indices' is stored as int32 but the metadata says uint16"),
    ("missing-field", _mutated(_delete(["layers", "fc2", "shape"])),
     r"metadata field 'layers.fc2.shape' is missing"),
    ("text-file", _bytes(b"hello, I am a text file\n"), r"not an lth_sparse ticket"),
    ("random-bytes", _bytes(bytes(range(256)) * 4), r"not an lth_sparse ticket"),
    ("zeros", _bytes(b"\x00" * 64), r"not an lth_sparse ticket"),
    ("plain-safetensors", _plain_safetensors(None),
     r"not an lth_sparse ticket file \(a safetensors file without the 'lth_sparse' metadata\)"),
    ("other-format", _plain_safetensors({"lth_sparse": json.dumps({"format": "other"})}),
     r"format is \"other\""),
    ("metadata-not-json", _plain_safetensors({"lth_sparse": "{not json"}), r"not valid JSON"),
    ("npz-ticket", _npz_ticket, r"is an npz ticket; the C runtime reads safetensors tickets only"),
    ("shape-bomb-columns", _shape_bomb, r"supports at most 2147483647 rows, columns and nonzeros"),
    ("shape-bomb-rows", _row_bomb, r"layer 'fc1': len\(indptr\) must be n_rows \+ 1 = 1099511627777"),
    ("header-claims-2^63", _header_len(2**63), r"is truncated: its safetensors header needs 9223372036854775808"),
    ("header-claims-all-but-one", _header_len(10**6), r"is truncated: its safetensors header needs"),
    ("offsets-claim-2^60", _raw_header(_ticket_meta_header(
        w={"dtype": "F32", "shape": [2**58], "data_offsets": [0, 2**60]})),
     r"is truncated: its tensors need 1152921504606846976 data bytes but the file holds 0"),
    ("shape-claims-2^62", _raw_header(_ticket_meta_header(
        w={"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]}), b"\0" * 4),
     r"tensor 'w' claims a shape \[4611686018427387904, 4611686018427387904\] too large"),
    ("shape-disagrees-with-offsets", _raw_header(_ticket_meta_header(
        w={"dtype": "F32", "shape": [1000], "data_offsets": [0, 4]}), b"\0" * 4),
     r"tensor 'w' of shape \[1000\] and dtype F32 needs 4000 bytes but its data_offsets span 4"),
    ("overlapping-offsets", _raw_header(_ticket_meta_header(
        a={"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        b={"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}), b"\0" * 12),
     r"data_offsets overlap or leave a gap"),
    ("negative-offset", _raw_header(_ticket_meta_header(
        w={"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]})),
     r"corrupt safetensors header entry for 'w'"),
    ("deep-json", _deep_json, r"JSON nested deeper than 64 levels"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_bad_tickets_are_refused_with_their_reason(runtime, tmp_path, good_layers, make, message):
    path = tmp_path / "bad.safetensors"
    make(path, good_layers)
    _one_line_error(runtime.cli(path, "--info"), message)
    # The forward path opens the same way: refused before any input is read.
    _one_line_error(runtime.cli(path, "--input", tmp_path / "absent.npy", "--output", tmp_path / "y.npy"),
                    message)
    assert not (tmp_path / "y.npy").exists()


def test_python_refuses_the_same_corpus_files(tmp_path, good_layers):
    # Every corpus file the runtime refuses is one Python refuses too (the column shape bomb
    # included: the loader's size limits refuse it), except the npz ticket (Python reads npz).
    runtime_only = {"npz-ticket"}
    from lth_sparse.errors import LthSparseError

    for case, make, _ in CORPUS:
        path = tmp_path / f"{case}.safetensors"
        make(path, good_layers)
        if case in runtime_only:
            read_ticket(path)
            continue
        with pytest.raises(LthSparseError):
            read_ticket(path)


def test_missing_directory_and_fifo(runtime, tmp_path):
    _one_line_error(runtime.cli(tmp_path / "nope.safetensors", "--info"), r"does not exist")
    _one_line_error(runtime.cli(tmp_path, "--info"), r"is a directory, not a ticket file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # No writer will ever come: a runtime that opened it blocking, or read it, would hang.
    _one_line_error(runtime.cli(fifo, "--info"), r"is not a regular file")
    _one_line_error(runtime.cli(tmp_path / "nope.safetensors", "--info"), r"does not exist")


# ============================================================================ the CLI


@pytest.fixture
def small_ticket(tmp_path):
    path = tmp_path / "t.safetensors"
    save_ticket(path, _layers_of(_pruned_mlp()))
    return path


@pytest.mark.parametrize("array,message", [
    (np.zeros((3, 20), np.int32), r"holds dtype '<i4'; give little-endian float32"),
    (np.zeros((3, 21), np.float32), r"has shape \(3, 21\): 21 values per sample, but the ticket takes 20"),
    (np.zeros((3, 20), np.float32).astype(">f4"), r"holds dtype '>f4'"),
    (np.asfortranarray(np.zeros((3, 20), np.float32)), r"is in Fortran order"),
    (np.zeros((3, 20), np.uint8), r"holds uint8 images but the ticket records no input preprocessing"),
])
def test_bad_npy_inputs(runtime, small_ticket, tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    _one_line_error(runtime.cli(small_ticket, "--input", tmp_path / "x.npy", "--output",
                                tmp_path / "y.npy"), message)
    assert not (tmp_path / "y.npy").exists()


def test_truncated_and_forged_npy(runtime, small_ticket, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 20), np.float32))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-7])
    _one_line_error(runtime.cli(small_ticket, "--input", tmp_path / "short.npy", "--output", tmp_path / "y.npy"),
                    r"header claims 60 elements but the file holds 233 data bytes")
    # A header claiming 2**40 rows must be refused before anything that size is allocated.
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 20), }"
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    (tmp_path / "bomb.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    _one_line_error(runtime.cli(small_ticket, "--input", tmp_path / "bomb.npy", "--output", tmp_path / "y.npy"),
                    r"header claims 21990232555520 elements but the file holds 0 data bytes")
    (tmp_path / "text.npy").write_text("not numpy")
    _one_line_error(runtime.cli(small_ticket, "--input", tmp_path / "text.npy", "--output", tmp_path / "y.npy"),
                    r"is not a .npy file")


def test_failed_output_write_leaves_nothing(runtime, small_ticket, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 20), np.float32))
    _one_line_error(runtime.cli(small_ticket, "--input", tmp_path / "x.npy", "--output",
                                tmp_path / "no" / "such" / "dir" / "y.npy"), r"cannot be written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors", "x.npy"]


@pytest.mark.parametrize("args,message", [
    ([], r"say what to do"),
    (["--info", "--bench"], r"choose one of"),
    (["--output", "y.npy"], r"--output needs --input"),
    (["--threads", "0", "--info"], r"--threads must be an integer in \[1, 4096\]"),
    (["--bench", "--batch", "1,x"], r"--batch must be an integer"),
    (["--info", "--repeats", "3"], r"--batch and --repeats go with --bench"),
    (["--frobnicate"], r"unknown option '--frobnicate'"),
])
def test_bad_cli_arguments_exit_2(runtime, small_ticket, args, message):
    _one_line_error(runtime.cli(small_ticket, *args), message)


def test_bench_prints_one_json_line_per_batch(runtime, small_ticket, tmp_path):
    proc = runtime.cli(small_ticket, "--bench", "--batch", "1,3,16", "--repeats", "5", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["batch"] for r in rows] == [1, 3, 16]
    for r in rows:
        assert r["repeats"] == 5 and r["threads"] == 1 and r["n_in"] == 20 and r["n_out"] == 5
        assert 0 < r["min_us"] <= r["median_us"] <= r["p90_us"]


def test_c_api_contract(runtime, tmp_path):
    path = tmp_path / "t.safetensors"
    save_ticket(path, _layers_of(_pruned_mlp(sizes=(784, 300, 100, 10), amount=0.9)))
    proc = subprocess.run([str(runtime.tool("lth_ticket_api_test")), str(path)], capture_output=True,
                          text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    diff = float(proc.stdout.split("max_abs_diff")[1])
    assert diff <= RUNTIME_ATOL


# ============================================================================ install + consumers


def test_install_then_build_consumers_with_pkg_config_and_cmake(runtime, tmp_path, small_ticket):
    cmake, _ = _toolchain()
    prefix = tmp_path / "prefix"
    proc = _run([cmake, "--install", runtime.build, "--prefix", prefix])
    assert proc.returncode == 0, proc.stderr
    assert (prefix / "include" / "lth_ticket.h").is_file()
    (pc,) = prefix.glob("lib*/**/pkgconfig/lth_ticket.pc")
    libdir = pc.parent.parent
    # The installed CLI finds its library through its RPATH, with no LD_LIBRARY_PATH.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run([str(prefix / "bin" / "lth-sparse-run"), str(small_ticket), "--info"],
                          capture_output=True, text=True, env=env, timeout=HANG_S)
    assert proc.returncode == 0 and "architecture: 20 -> 12 -> 7 -> 5" in proc.stdout, proc.stderr

    example = REPO / "csrc" / "runtime" / "examples" / "classify_mnist.c"
    consumers = []
    if shutil.which("pkg-config"):
        flags = _run(["pkg-config", "--cflags", "--libs", "lth_ticket"],
                     env={**env, "PKG_CONFIG_PATH": str(pc.parent)})
        assert flags.returncode == 0, flags.stderr
        exe = tmp_path / "classify_pkgconfig"
        built = _run(["cc", example, "-o", exe, *flags.stdout.split(), f"-Wl,-rpath,{libdir}"])
        assert built.returncode == 0, built.stderr
        consumers.append(exe)
    elif REQUIRE:
        pytest.fail("pkg-config is missing (`make setup` installs it)")
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(consumer C)\n"
        "find_package(lth_ticket 0.1 REQUIRED)\n"
        f"add_executable(classify {example})\n"
        "target_link_libraries(classify PRIVATE lth_ticket::lth_ticket)\n")
    for step in ([cmake, "-S", project, "-B", project / "build", f"-DCMAKE_PREFIX_PATH={prefix}"],
                 [cmake, "--build", project / "build"]):
        proc = _run(step)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    consumers.append(project / "build" / "classify")

    # A tiny IDX pair: 7 images the ticket cannot take (20 inputs, images 28x28) must be
    # refused, and 4x5 images (20 pixels) classified exactly as Python classifies them.
    images = np.random.default_rng(fresh_seed()).integers(0, 256, (7, 4, 5), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8) % 5
    (tmp_path / "img").write_bytes(struct.pack(">IIII", 2051, 7, 4, 5) + images.tobytes())
    (tmp_path / "lab").write_bytes(struct.pack(">II", 2049, 7) + labels.tobytes())
    layers, _ = read_ticket(small_ticket)
    ticket = tmp_path / "with_input.safetensors"
    save_ticket(ticket, layers, metadata={"input": {"flatten": 20, "scale": 1 / 255, "normalize": None}})
    with torch.no_grad():
        x = torch.from_numpy(images.reshape(7, 20)).float().div_(255.0)
        correct = int((load_ticket(ticket)(x).argmax(1) == torch.from_numpy(labels).long()).sum())
    for exe in consumers:
        proc = subprocess.run([str(exe), str(ticket), str(tmp_path / "img"), str(tmp_path / "lab")],
                              capture_output=True, text=True, env=env, timeout=HANG_S)
        assert proc.returncode == 0, proc.stderr
        assert f"({correct}/7 correct)" in proc.stdout


# ============================================================================ sanitizers


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LTH_SPARSE_RUNTIME_SANITIZE") != "1",
                    reason="set LTH_SPARSE_RUNTIME_SANITIZE=1 to build and run the ASan+UBSan runtime")
def test_corpus_under_address_and_undefined_behaviour_sanitizers(tmp_path, good_layers):
    # Outside build/: the benchmarks pick the newest build/**/lth-sparse-run, never this one.
    build = Path(tempfile.gettempdir()) / f"lth_sparse-runtime-asan-{os.getuid()}"
    rt = _build_runtime(build, "-DCMAKE_BUILD_TYPE=Debug",
                        "-DLTH_SPARSE_SANITIZE=address,undefined", "-DLTH_SPARSE_NATIVE=OFF")
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    for case, make, message in CORPUS:
        path = tmp_path / f"{case}.safetensors"
        make(path, good_layers)
        _one_line_error(rt.cli(path, "--info", env=env), message)
    good = tmp_path / "good.safetensors"
    save_ticket(good, _layers_of(_pruned_mlp(sizes=(784, 300, 100, 10), amount=0.9)))
    x = torch.rand(5, 784)
    np.save(tmp_path / "x.npy", x.numpy())
    proc = rt.cli(good, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", env=env)
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        want = load_ticket(good)(x)
    assert (torch.from_numpy(np.load(tmp_path / "y.npy")) - want).abs().max().item() <= RUNTIME_ATOL
    proc = subprocess.run([str(rt.tool("lth_ticket_api_test")), str(good)], capture_output=True,
                          text=True, env=env, timeout=HANG_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
