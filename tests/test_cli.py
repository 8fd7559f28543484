"""CLI behaviour: exit codes, nothing written on bad input, and one MNIST smoke run end to end."""
from __future__ import annotations

import json

import pytest
import torch

from lth_sparse.cli import main
from lth_sparse.lottery.data import load_data_for
from lth_sparse.lottery.models import build_model
from lth_sparse.lottery.pruning import load_params, set_masks
from lth_sparse.lottery.store import open_run
from lth_sparse.sparse.ticket_file import load_ticket, read_ticket


def _files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("flags,message", [
    (["--rate", "1.5"], "prune.rate must be a fraction in [0, 1)"),
    (["--output-rate", "-0.1"], "prune.output_rate must be a fraction"),
    (["--iterations", "-5"], "train.iterations must be an integer"),
    (["--init", "xavier_magic"], "model.init must be one of"),
    (["--method", "lottery"], "prune.method must be one of"),
    (["--controls", "reinit,shuffle"], "lottery.controls must be one of"),
    (["--hidden", "300,abc"], "model.hidden"),
    (["--layer-rates", "fc7=0.5"], "unknown layer 'fc7'"),
    (["--rewind-iteration", "999999"], "lottery.rewind_iteration"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys, flags, message):
    runs = tmp_path / "runs"
    code = main(["find-ticket", "--runs-dir", str(runs), "--data-dir", str(tmp_path / "none"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert _files(runs) == []


def test_bad_config_file_exit_2(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"train": {"iterations": 10, "momentum": 0.9}}))
    assert main(["find-ticket", "--config", str(cfg), "--runs-dir", str(tmp_path / "r")]) == 2
    assert "unknown option train.momentum" in capsys.readouterr().err
    cfg.write_text("{not json")
    assert main(["find-ticket", "--config", str(cfg), "--runs-dir", str(tmp_path / "r")]) == 2
    assert "could not be parsed" in capsys.readouterr().err
    assert _files(tmp_path / "r") == []


def test_missing_data_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch):
    # no network use: an empty dir + download attempt would hang offline, so forbid downloads
    import lth_sparse.lottery.data as data_mod
    real = data_mod.load_dataset
    monkeypatch.setattr(data_mod, "load_dataset", lambda *a, **k: real(*a, **{**k, "download": False}))
    runs = tmp_path / "runs"
    code = main(["find-ticket", "--runs-dir", str(runs), "--data-dir", str(tmp_path / "nodata"),
                 "--iterations", "10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "mnist not found in" in err and "LTH_SPARSE_DATA" in err
    assert _files(runs) == []


def test_show_and_export_of_unknown_run_exit_2(tmp_path, capsys):
    assert main(["show", "deadbeef", "--runs-dir", str(tmp_path)]) == 2
    assert "no run 'deadbeef'" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "t.safetensors")]) == 2
    assert not (tmp_path / "t.safetensors").exists()


def test_show_lists_no_runs(tmp_path, capsys):
    assert main(["show", "--runs-dir", str(tmp_path)]) == 0
    assert "no runs yet" in capsys.readouterr().out


# ------------------------------------------------------------------------ MNIST smoke

SMOKE = ["--iterations", "300", "--eval-every", "100", "--rounds", "2", "--rate", "0.5",
         "--output-rate", "0.3", "--controls", "reinit"]


@pytest.fixture(scope="module")
def mnist_run(mnist_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    code = main(["find-ticket", "--runs-dir", str(runs), "--data-dir", str(mnist_dir), *SMOKE])
    assert code == 0
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return open_run(run_dir)


@pytest.mark.mnist
def test_find_ticket_on_mnist_learns_far_above_chance(mnist_run, capsys):
    metrics = mnist_run.all_metrics()
    assert [m["round"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert m["ticket"]["test_acc_at_early_stop"] > 0.85
    assert 0.2 < metrics[-1]["ticket"]["pct_remaining"] / 100 < 0.3
    assert main(["show", str(mnist_run.path)]) == 0
    out = capsys.readouterr().out
    assert "reinit acc @ES" in out and "% remaining" in out


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.mnist
def test_export_metadata_holds_no_local_paths_and_honours_mode(mnist_run, mnist_dir, tmp_path):
    out = tmp_path / "ticket.safetensors"
    assert main(["export", str(mnist_run.path), "-o", str(out), "--format", "npz",
                 "--mode", "600"]) == 0
    for path in (out, out.with_suffix(".npz")):
        assert path.stat().st_mode & 0o777 == 0o600
    _, meta = read_ticket(out)
    config = meta["metadata"]["config"]
    assert "data_dir" not in config["data"]
    assert config["data"]["dataset"] == mnist_run.read_config().data.dataset
    local = (str(mnist_dir), str(mnist_dir.resolve()), str(mnist_run.path), str(tmp_path))
    leaks = [s for s in _strings(meta) if s.startswith("/") or any(p in s for p in local)]
    assert leaks == []


def test_export_rejects_a_bad_mode(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tmp_path), "-o", str(tmp_path / "t.safetensors"), "--mode", "rw-r"])
    assert exc.value.code == 2
    assert "--mode must be octal permission bits" in capsys.readouterr().err
    assert _files(tmp_path) == []


@pytest.mark.mnist
def test_export_round_trip_matches_dense_masked_on_mnist(mnist_run, tmp_path):
    out = tmp_path / "ticket.safetensors"
    assert main(["export", str(mnist_run.path), "--sparsity", "0.75", "-o", str(out),
                 "--format", "npz"]) == 0
    assert out.exists() and out.with_suffix(".npz").exists()
    layers, meta = read_ticket(out)
    assert meta["metadata"]["source"]["round"] == 2
    cfg = mnist_run.read_config()
    data = load_data_for(cfg)
    state = mnist_run.read_round_state(2)
    dense = build_model(cfg)
    set_masks(dense, state["masks"])
    load_params(dense, state["early_stop"])
    sparse = load_ticket(out)
    with torch.no_grad():
        ld, ls = dense(data.test.images), sparse(data.test.images)
    assert (ld - ls).abs().max().item() <= 1e-4
    assert torch.equal(ld.argmax(1), ls.argmax(1))
    acc = (ls.argmax(1) == data.test.labels).sum().item() / len(data.test.labels)
    assert acc == pytest.approx(meta["metadata"]["accuracy"]["test"], abs=1e-9)
    # the CSR pattern is exactly the mask
    for name, csr, _ in layers:
        assert csr.nnz == int(state["masks"][f"{name}.weight"].sum())


@pytest.mark.mnist
def test_train_ticket_sparse_matches_dense_masked(mnist_run):
    from lth_sparse.bridge.retrain import train_ticket
    from lth_sparse.sparse.ops import backend_status

    backend = "cpu" if backend_status("cpu")[0] else "reference"
    results = train_ticket(mnist_run.path, backend=backend, iterations=300, progress=False,
                           log=lambda s: None)
    diff = abs(results["sparse"].final_test_acc - results["dense"].final_test_acc)
    assert diff <= 0.002  # within 0.2 accuracy points
    # the dense replay reproduces the round's own training (same data order): exactly when the
    # round trained dense too, within fp32 rounding when auto trained it sparse
    stored = mnist_run.read_round_metrics(2)["ticket"]
    exact = stored.get("backend", "dense") == "dense"
    assert results["dense"].final_test_acc == pytest.approx(stored["final_test_acc"],
                                                            abs=1e-12 if exact else 1e-3)


@pytest.mark.mnist
def test_incompatible_run_directory_exit_2(mnist_run, tmp_path, capsys):
    import shutil
    copy = tmp_path / mnist_run.run_id
    shutil.copytree(mnist_run.path, copy)
    raw = json.loads((copy / "config.json").read_text())
    raw["store_format"] = 0
    (copy / "config.json").write_text(json.dumps(raw))
    before = _files(copy)
    assert main(["show", str(copy)]) == 2
    assert "run-store format 0" in capsys.readouterr().err
    assert main(["export", str(copy), "-o", str(tmp_path / "t.safetensors")]) == 2
    assert _files(copy) == before and not (tmp_path / "t.safetensors").exists()


@pytest.mark.mnist
def test_export_npz_refuses_an_npz_output_name_and_keeps_the_old_ticket(mnist_run, tmp_path,
                                                                       capsys):
    out = tmp_path / "t.npz"
    assert main(["export", str(mnist_run.path), "-o", str(out), "--format", "npz"]) == 2
    assert "give -o" in capsys.readouterr().err and not out.exists()


@pytest.mark.mnist
def test_corrupt_round_file_is_a_one_line_error(mnist_run, tmp_path, capsys):
    import shutil
    copy = tmp_path / mnist_run.run_id
    shutil.copytree(mnist_run.path, copy)
    (copy / "round_001" / "state.pt").write_bytes(b"not a torch file")
    assert main(["export", str(copy), "--round", "1", "-o", str(tmp_path / "t.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "is unreadable or corrupt" in err and "run find-ticket again" in err
    assert "Traceback" not in err
