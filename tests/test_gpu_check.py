"""benchmarks/gpu_check.sh and benchmarks/gpu_targets.py without a GPU.

The script's steps are replaced by fake commands (GPU_CHECK_FAKE_<STEP>) so that its own logic
is what runs here: argument checks, time boxes, the results layout and the summary. The target
evaluation is checked on synthetic bench rows. No test needs CUDA, and none times anything.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _load_targets():
    spec = importlib.util.spec_from_file_location("gpu_targets",
                                                  REPO / "benchmarks" / "gpu_targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gt = _load_targets()

BIG_NNZ_90 = 1_677_722     # about 10% of 4096 x 4096


def spmm_row(provider, ms, batch, sparsity=0.9, dtype="bf16", shape="4096x4096",
             status="ok", nnz=BIG_NNZ_90, reason=None, timer="do_bench"):
    n_in, n_out = (int(t) for t in shape.split("x"))
    return dict(kind="spmm", shape=shape, in_features=n_in, out_features=n_out,
                sparsity=sparsity, density=nnz / (n_in * n_out), nnz=nnz, batch=batch,
                dtype=dtype, device="cuda", provider=provider, variant=None, status=status,
                rel_error=0.0, reason=reason, timer=timer, cache="hot", repeats=100,
                median_ms=ms if status == "ok" else None, q25_ms=ms, q75_ms=ms, min_ms=ms,
                max_ms=ms, speedup_vs_dense=None, speedup_vs_torch_csr=None, accuracy=None)


def model_row(kind, provider, ms, batch, dtype, shape, sparsity, timer="do_bench",
              status="ok"):
    row = spmm_row(provider, ms, batch, sparsity=sparsity, dtype=dtype, status=status,
                   timer=timer)
    row.update(kind=kind, shape=shape, in_features=784, out_features=10)
    return row


def by_label(targets):
    return {t["target"].split(" ")[0] + ":" + str(i): t for i, t in enumerate(targets)}


# ---------------------------------------------------------------------------- target logic

def test_spmm_ratio_uses_the_worst_batch_and_names_every_batch():
    rows = [spmm_row("dense", 0.030, 1), spmm_row("triton", 0.010, 1),      # 3.0x
            spmm_row("dense", 0.030, 16), spmm_row("triton", 0.015, 16),    # 2.0x
            spmm_row("dense", 9.0, 256), spmm_row("triton", 1.0, 256)]      # out of range
    t = gt.spmm_ratio_target(rows, "x", 0.9, lambda b: 1 <= b <= 16, "dense", 2.5)
    assert t["status"] == gt.MISSED and t["measured"] == pytest.approx(2.0)
    assert "batch 1: 3.00x" in t["detail"] and "batch 16: 2.00x" in t["detail"]
    assert "worst: batch 16" in t["detail"] and "256" not in t["detail"]
    rows[3] = spmm_row("triton", 0.011, 16)
    t = gt.spmm_ratio_target(rows, "x", 0.9, lambda b: 1 <= b <= 16, "dense", 2.5)
    assert t["status"] == gt.MET and t["measured"] == pytest.approx(0.030 / 0.011, rel=1e-3)


def test_torch_csr_falls_back_to_fp32_only_when_bf16_has_no_result():
    rows = [spmm_row("torch-csr", 0.1, 1, status="SKIPPED", reason="no bf16"),
            spmm_row("triton", 0.02, 1), spmm_row("torch-csr", 0.09, 1, dtype="fp32")]
    t = gt.spmm_ratio_target(rows, "x", 0.9, lambda b: b == 1, "torch-csr", 3.0,
                             fallback_dtype="fp32")
    assert t["status"] == gt.MET and t["measured"] == pytest.approx(4.5)
    assert "torch-csr in fp32" in t["detail"]
    rows.append(spmm_row("torch-csr", 0.05, 1))           # a bf16 result wins over fp32
    rows.pop(0)
    t = gt.spmm_ratio_target(rows, "x", 0.9, lambda b: b == 1, "torch-csr", 3.0,
                             fallback_dtype="fp32")
    assert t["status"] == gt.MISSED and t["measured"] == pytest.approx(2.5)
    assert "fp32" not in t["detail"]


def test_failed_kernel_is_not_measured_and_says_why():
    rows = [spmm_row("dense", 0.03, 1),
            spmm_row("triton", None, 1, status="FAILED", reason="max relative error 0.5")]
    t = gt.spmm_ratio_target(rows, "x", 0.9, lambda b: b == 1, "dense", 2.5)
    assert t["status"] == gt.NOT_MEASURED and t["measured"] is None
    assert "FAILED" in t["detail"] and "relative error" in t["detail"]


def test_min_bytes_and_bandwidth_fraction():
    row = spmm_row("triton", 0.01, 16, nnz=1000, shape="300x100")
    # values bf16 (2) + int32 indices (4) per nonzero, int32 indptr, x and y and bias in bf16
    expected = 1000 * 6 + 101 * 4 + 16 * 300 * 2 + 16 * 100 * 2 + 100 * 2
    assert gt.spmm_min_bytes(row) == expected

    big = spmm_row("triton", 0.004, 1)
    gbps = gt.spmm_min_bytes(big) / 0.004e-3 / 1e9
    t = gt.bandwidth_target([big, spmm_row("dense", 0.05, 1)], "bw", copy_gbps=gbps / 0.8)
    assert t["status"] == gt.MET and t["measured"] == pytest.approx(0.8, rel=1e-3)
    t = gt.bandwidth_target([big], "bw", copy_gbps=gbps / 0.6)
    assert t["status"] == gt.MISSED
    t = gt.bandwidth_target([big], "bw", copy_gbps=None)
    assert t["status"] == gt.NOT_MEASURED and "copy bandwidth" in t["detail"]


def test_ticket_and_train_targets_must_be_strictly_faster():
    model = "784-300-100-10"
    rows = [model_row("ticket", "sparse", 0.010, 1, "fp32", model, 0.9, timer="cuda-graph"),
            model_row("ticket", "dense-masked", 0.010, 1, "fp32", model, 0.9, timer="cuda-graph"),
            model_row("ticket", "sparse", 0.005, 1, "bf16", model, 0.9, timer="cuda-graph"),
            model_row("ticket", "dense-masked", 0.010, 1, "bf16", model, 0.9,
                      timer="do_bench")]
    t = gt.ticket_target(rows, "ticket")
    assert t["status"] == gt.MISSED and t["measured"] == pytest.approx(1.0)  # equal is not faster
    assert "CUDA graphs both sides" in t["detail"]
    assert "bf16 batch 1: 2.00x" in t["detail"] and "not both CUDA graphs" in t["detail"]
    rows[0] = model_row("ticket", "sparse", 0.008, 1, "fp32", model, 0.9, timer="cuda-graph")
    assert gt.ticket_target(rows, "ticket")["status"] == gt.MET

    train = [model_row("train", "dense-masked", 3.0, 256, "bf16", gt.TRAIN_MODEL, 0.95),
             model_row("train", "sparse-triton", 2.0, 256, "bf16", gt.TRAIN_MODEL, 0.95),
             model_row("train", "sparse-triton", 0.1, 256, "bf16", gt.TRAIN_MODEL, 0.9)]
    t = gt.train_target(train, "train")
    assert t["status"] == gt.MET and t["measured"] == pytest.approx(1.5)
    assert gt.train_target(train[:1], "train")["status"] == gt.NOT_MEASURED


def test_every_issue_target_is_reported_and_nothing_is_invented():
    targets = gt.evaluate_targets([], copy_gbps=None)
    assert len(targets) == 6
    assert all(t["status"] == gt.NOT_MEASURED and t["measured"] is None for t in targets)
    text = gt.render_summary([], targets, {})
    assert text.count("not measured") >= 12  # the measured and status columns of every row


# ---------------------------------------------------------------------------- the script

def run_script(tmp_path, *args, env=None, timeout=60):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    full_env.pop("OUT", None)
    full_env.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), "--python", sys.executable,
                           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                           *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=tmp_path)


def test_help_lists_steps_and_exits_zero(tmp_path):
    res = run_script(tmp_path, "--help")
    assert res.returncode == 0, res.stderr
    for word in ("usage:", "build=", "cuda_tests=", "grid=", "ticket=", "train=", "--budget"):
        assert word in res.stdout
    assert not (tmp_path / "out").exists()  # --help runs nothing


@pytest.mark.parametrize("args, env, message", [
    (["--budget", "grid=abc"], {}, "time box of step 'grid'"),
    (["--budget", "grid=0"], {}, "whole number of seconds >= 1, got '0'"),
    (["--budget", "grid"], {}, "--budget takes STEP=SECONDS"),
    (["--budget", "gird=10"], {}, "unknown step 'gird'"),
    ([], {"GPU_CHECK_BUDGET_TRAIN": "-5"}, "$GPU_CHECK_BUDGET_TRAIN"),
    (["--budget", "grid=500"], {}, "add up to"),
    (["--cell-budget", "fast"], {}, "--cell-budget must be a positive number"),
    (["--frobnicate"], {}, "unknown argument '--frobnicate'"),
])
def test_bad_arguments_give_one_clear_error(tmp_path, args, env, message):
    res = run_script(tmp_path, *args, env=env)
    assert res.returncode == 2
    assert res.stderr.startswith("gpu_check.sh: error:") and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1  # one error, nothing run after it
    assert not (tmp_path / "work").exists()


def _meta(dtypes):
    machine = dict(cpu="x", cores=16, env={}, torch="2.11", triton="3.6", numpy="2", scipy="1",
                   lth_sparse="0", python="3.12", extension="built", git_sha="abc",
                   date="2026-12-01", gpu="NVIDIA H200", cuda="13.0", load_average=None)
    return dict(command="lth-sparse bench ...", device="cuda", dtypes=dtypes, threads=16,
                machine=machine, load_average_start=None, timing="do_bench", quick=False,
                config=dict(ticket=None), elapsed_s=1.0)


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _fake_writes(fixture: Path, part: str) -> str:
    dest = f"$GPU_CHECK_WORK/parts/{part}"
    return f"mkdir -p {dest} && cp {shlex.quote(str(fixture))} {dest}/results.json"


def test_time_boxes_layout_and_summary(tmp_path):
    """A grid part that outlives its box is recorded as timed out, the next part is not started
    once the grid box is spent, and every later step still runs; $OUT holds the layout."""
    grid = _write(tmp_path / "grid.json", dict(meta=_meta(["bf16"]), targets=[], rows=[
        spmm_row("dense", 0.030, 1), spmm_row("torch-csr", 0.060, 1), spmm_row("triton", 0.010, 1),
        spmm_row("dense", 0.030, 16), spmm_row("torch-csr", 0.060, 16),
        spmm_row("triton", 0.011, 16)]))
    meta = _meta(["fp32"])
    meta["config"]["ticket"] = "/somewhere/lenet_random_90pct.safetensors"
    model = "784-300-100-10"
    ticket = _write(tmp_path / "ticket.json", dict(meta=meta, targets=[], rows=[
        model_row("ticket", "dense-masked", 0.02, 1, "fp32", model, 0.9, timer="cuda-graph"),
        model_row("ticket", "sparse", 0.01, 1, "fp32", model, 0.9, timer="cuda-graph")]))
    bandwidth = _write(tmp_path / "bw.json", dict(gbps=4000.0, buffer_bytes=2 << 30,
                                                  gpu="NVIDIA H200"))
    env = {
        "GPU_CHECK_GRID_PARTS": "grid-a|4096x4096|0.9|1,16|bf16\n"
                                "grid-b|4096x4096|0.98|4096|bf16\n"
                                "grid-c|784x300|0.9|1|fp32",
        "GPU_CHECK_GRID_MIN_PART": "1",
        "GPU_CHECK_FAKE_BUILD": "echo built",
        "GPU_CHECK_FAKE_CUDA_TESTS": "echo no gpu here; exit 3",
        "GPU_CHECK_FAKE_BANDWIDTH": f"cp {shlex.quote(str(bandwidth))} "
                                    "$GPU_CHECK_WORK/copy_bandwidth.json",
        "GPU_CHECK_FAKE_GRID_A": _fake_writes(grid, "grid-a"),
        "GPU_CHECK_FAKE_GRID_B": "sleep 60",
        "GPU_CHECK_FAKE_TICKET": _fake_writes(ticket, "ticket"),
        "GPU_CHECK_FAKE_TRAIN": "exit 7",
    }
    res = run_script(tmp_path, "--budget", "grid=2", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    out = tmp_path / "out"
    report = json.loads((out / "gpu_check.json").read_text())
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status == {"build": "ok", "cuda_tests": "failed rc 3", "bandwidth": "ok",
                      "grid-a": "ok", "grid-b": "timed out", "grid-c": "not run",
                      "ticket": "ok", "train": "failed rc 7"}  # collect writes the report

    tag = "cuda-nvidia-h200"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted([
        "summary.md", "gpu_check.json", "gpu_check_full.tar.gz",
        f"{tag}/inference-fp32-bf16/results.json", f"{tag}/inference-fp32-bf16/results.md",
        f"{tag}/inference-fp32-bf16/speedup_4096x4096_bf16.png",
        f"{tag}/ticket-lenet_random_90pct/results.json"])
    assert len(files) <= 8 and all(f.count("/") <= 2 for f in files)  # the device tool's limits

    merged = json.loads((out / tag / "inference-fp32-bf16" / "results.json").read_text())
    assert len(merged["rows"]) == 6
    targets = {t["target"]: t for t in report["targets"]}
    vs_dense = targets["4096x4096 90% bf16 batch 1-16 vs dense bf16 cuBLAS"]
    assert vs_dense["status"] == "met" and vs_dense["measured"] == pytest.approx(0.030 / 0.011,
                                                                                 rel=1e-3)
    assert targets["4096x4096 98% bf16 batch >= 1024 vs dense bf16"]["status"] == "not measured"
    ticket_t = next(t for t in report["targets"] if t["target"].startswith("LeNet"))
    assert ticket_t["status"] == "met" and ticket_t["measured"] == pytest.approx(2.0)
    bw = next(t for t in report["targets"] if "bandwidth" in t["target"])
    assert bw["status"] in ("met", "missed") and bw["measured"] is not None

    summary = (out / "summary.md").read_text()
    assert "**timed out**" in summary and "**failed rc 7**" in summary
    assert "**not run**" in summary and "not measured" in summary
    assert "| grid-b | **timed out**" in res.stdout  # the summary is printed at the end
    import tarfile
    with tarfile.open(out / "gpu_check_full.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"logs/grid-b.log", "logs/train.log", "steps.tsv",
            f"results/{tag}/inference-fp32-bf16/results.csv"} <= names


def test_a_failed_collect_still_leaves_a_summary(tmp_path):
    env = {f"GPU_CHECK_FAKE_{s}": "true" for s in ("BUILD", "CUDA_TESTS", "BANDWIDTH", "GRID",
                                                   "TICKET", "TRAIN")}
    env["GPU_CHECK_FAKE_COLLECT"] = "echo broken >&2; exit 1"
    res = run_script(tmp_path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Targets not evaluated" in summary
    assert "| collect | **failed rc 1**" in summary and "| grid | **ok**" in summary
    assert (tmp_path / "out" / "gpu_check_full.tar.gz").is_file()


def test_skipped_steps_are_recorded_and_their_boxes_do_not_count(tmp_path):
    env = {f"GPU_CHECK_FAKE_{s}": "true" for s in ("BUILD", "CUDA_TESTS", "BANDWIDTH", "GRID",
                                                   "TICKET", "TRAIN")}
    # 500 s for the grid alone would break the 560 s limit, but the grid is skipped
    res = run_script(tmp_path, "--skip", "grid,train", "--budget", "grid=500", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status == {"build": "ok", "cuda_tests": "ok", "bandwidth": "ok", "grid": "skipped",
                      "ticket": "ok", "train": "skipped"}
    res = run_script(tmp_path, "--skip", "collect")
    assert res.returncode == 2 and "always runs" in res.stderr
