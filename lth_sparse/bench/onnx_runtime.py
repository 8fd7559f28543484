"""ONNX Runtime on the dense masked model: the inference engine a deployer would reach for.

Optional: needs the `bench` extra (pip install 'lth_sparse[bench]', i.e. onnxruntime + onnx).
Both are imported only when a session is built, so the rest of the bench runs without them and
the ticket table says why the row is missing.
"""
from __future__ import annotations

import importlib.util
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

INSTALL_HINT = "pip install 'lth_sparse[bench]' (onnxruntime + onnx)"


def ort_status() -> tuple[bool, str]:
    """(True, "ok") when onnxruntime and onnx are importable, else (False, what to install)."""
    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed: {INSTALL_HINT}"
    return True, "ok"


def export_onnx(model: torch.nn.Module, n_in: int, path: Path) -> None:
    """Export `model` (fp32, (batch, n_in) -> (batch, n_out)) to `path` with a dynamic batch."""
    example = torch.zeros(2, n_in)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice: known
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["x"],
                          output_names=["logits"], dynamo=False,
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})


def ort_session(model: torch.nn.Module, n_in: int, threads: int):
    """An ONNX Runtime CPU session of `model`: intra-op threads = the bench's thread count,
    inter-op 1 (a single chain of layers has nothing to overlap), all graph optimizations."""
    import onnxruntime as ort  # optional dependency (the `bench` extra): imported on use

    with tempfile.TemporaryDirectory(prefix="lth_sparse_ort_") as tmp:
        path = Path(tmp) / "dense_masked.onnx"
        export_onnx(model, n_in, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # the session reads the file while it is created; it keeps no handle on it afterwards
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_forward(session, x: torch.Tensor) -> Callable[[], np.ndarray]:
    """A no-argument call of `session` on x (batch, n_in) fp32 CPU, converted to numpy once
    (outside the timed call, as a deployer holds numpy buffers)."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x.detach().cpu().numpy())}
    out = [session.get_outputs()[0].name]
    return lambda: session.run(out, feed)[0]
