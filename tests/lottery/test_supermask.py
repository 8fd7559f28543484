"""Supermasks (edge-popup) on tiny synthetic data: exact top-k, frozen weights, straight-through
gradients, the run store (hash, resume), export through the CSR ticket file, and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lth_sparse.cli import main
from lth_sparse.errors import ConfigError
from lth_sparse.lottery.config import ExperimentConfig
from lth_sparse.lottery.models import MLP
from lth_sparse.lottery.store import Run, list_runs, open_run
from lth_sparse.lottery.supermask import (
    SupermaskConfig,
    SupermaskMLP,
    find_supermask,
    frozen_weights,
    kept_count,
    masks_from_scores,
    topk_mask,
)
from lth_sparse.sparse.ticket_file import load_ticket, read_ticket
from tests.helpers import TOL, fresh_seed
from tests.lottery.test_rounds import synthetic_dataset


def tiny_supermask_config(**overrides) -> SupermaskConfig:
    cfg = SupermaskConfig()
    cfg.model.hidden = (32, 16)
    cfg.train.iterations = 60
    cfg.train.eval_every = 20
    cfg.train.batch_size = 30
    cfg.supermask.keep = 0.3
    cfg.supermask.score_lr = 0.05  # a few dozen steps must visibly move the masks
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg.validate()


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


@pytest.fixture(scope="module")
def done_run(data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cfg = tiny_supermask_config(supermask__layer_keep={"fc3": 0.5})
    return find_supermask(cfg, runs, data=data, progress=False, log=lambda s: None), cfg


# ------------------------------------------------------------------------ top-k masks

@pytest.mark.parametrize("numel,keep", [(1, 1.0), (1, 0.01), (7, 0.5), (10, 0.25), (784 * 3, 0.1),
                                        (1000, 0.999), (37, 1.0)])
def test_kept_count_rounds_like_torch_pruning_and_keeps_at_least_one(numel, keep):
    pruned = round((1.0 - keep) * numel)  # torch.nn.utils.prune's count for amount = 1 - keep
    assert kept_count(numel, keep) == max(1, numel - pruned)


@pytest.mark.parametrize("levels", [1, 2, 3, 1000])
def test_topk_mask_has_exactly_k_entries_even_with_ties(levels):
    g = torch.Generator().manual_seed(fresh_seed())
    values = torch.randint(0, levels, (13, 29), generator=g).float()  # levels=1: all tied
    for kept in (1, 2, 50, 13 * 29 - 1, 13 * 29):
        mask = topk_mask(values, kept)
        assert mask.dtype == torch.bool and mask.shape == values.shape
        assert int(mask.sum()) == kept
        if kept < values.numel():
            assert values[mask].min() >= values[~mask].max()  # every kept >= every dropped
        assert torch.equal(mask, topk_mask(values, kept))  # deterministic


def test_topk_mask_breaks_ties_by_lowest_index():
    values = torch.tensor([0.5, 1.0, 0.5, 0.5, 2.0, 0.5])
    assert topk_mask(values, 3).tolist() == [True, True, False, False, True, False]


def test_topk_mask_rejects_impossible_counts():
    with pytest.raises(ValueError, match="kept must be in"):
        topk_mask(torch.ones(4), 0)
    with pytest.raises(ValueError, match="kept must be in"):
        topk_mask(torch.ones(4), 5)


def test_every_layer_keeps_its_exact_count(done_run):
    run, cfg = done_run
    state = run.read_round_state(0)
    keep = cfg.keep_per_layer()
    assert keep == {"fc1": 0.3, "fc2": 0.3, "fc3": 0.5}
    for masks in (state["masks"], state["final_masks"]):
        for name, k in keep.items():
            mask = masks[f"{name}.weight"]
            assert int(mask.sum()) == kept_count(mask.numel(), k)
    metrics = run.read_round_metrics(0)
    for name, k in keep.items():
        layer = metrics["sparsity"]["layers"][name]
        assert layer["kept"] == kept_count(layer["total"], k) and layer["desired"] == k


# ------------------------------------------------------------------------ weights and gradients

def test_signed_constant_init_is_plus_minus_kaiming_std():
    for layer in MLP(hidden=(300, 100), init="signed_constant", seed=fresh_seed()).layers:
        std = math.sqrt(2.0 / layer.weight.shape[1])
        assert torch.equal(layer.weight.abs(), torch.full_like(layer.weight, std))
        assert 0.45 < (layer.weight > 0).float().mean().item() < 0.55  # random signs
        assert not layer.bias.any()


def test_scale_fan_divides_the_std_by_sqrt_keep():
    plain = frozen_weights(tiny_supermask_config())
    scaled = frozen_weights(tiny_supermask_config(supermask__scale_fan=True,
                                                  supermask__layer_keep={"fc3": 0.5}))
    for name, k in {"fc1": 0.3, "fc2": 0.3, "fc3": 0.5}.items():
        torch.testing.assert_close(scaled[f"{name}.weight"], plain[f"{name}.weight"] / math.sqrt(k),
                                   **TOL[torch.float32])


def _tiny_model(seed):
    cfg = tiny_supermask_config(train__seed=seed)
    params = frozen_weights(cfg)
    kept = {n: kept_count(params[f"{n}.weight"].numel(), 0.3) for n in ("fc1", "fc2", "fc3")}
    return SupermaskMLP(params, kept, score_seed=seed), params


def test_weights_are_buffers_and_scores_the_only_parameters():
    model, _ = _tiny_model(fresh_seed())
    names = {n for n, _ in model.named_parameters()}
    assert names == {f"layers.{i}.scores" for i in range(3)}


def test_scores_get_straight_through_gradients_everywhere(data):
    model, params = _tiny_model(fresh_seed())
    x, y = data.train.images[:64], data.train.labels[:64]
    F.cross_entropy(model(x), y).backward()
    # reference: the gradient of the masked weight W*m, times W, through |s| (edge-popup)
    masks = model.masks()
    effective = [(params[f"fc{i + 1}.weight"] * masks[f"fc{i + 1}.weight"]).requires_grad_()
                 for i in range(3)]
    h = x
    for i, w in enumerate(effective):
        h = F.linear(h, w, params[f"fc{i + 1}.bias"])
        h = torch.relu(h) if i < 2 else h
    F.cross_entropy(h, y).backward()
    for i, layer in enumerate(model.layers):
        expected = effective[i].grad * params[f"fc{i + 1}.weight"] * layer.scores.detach().sign()
        torch.testing.assert_close(layer.scores.grad, expected, **TOL[torch.float32])
        dropped = ~masks[f"fc{i + 1}.weight"]
        # dropped weights' scores learn too (that is how a weight "pops up" again)
        assert layer.scores.grad[dropped].abs().sum() > 0
        assert layer.weight.grad is None


def test_training_moves_scores_and_masks_but_never_the_weights(done_run):
    run, cfg = done_run
    state = run.read_round_state(0)
    expected = frozen_weights(cfg)
    for params in (state["early_stop"], state["final"], run.read_rewind()):
        assert params.keys() == expected.keys()
        for key in expected:
            assert torch.equal(params[key], expected[key])
    initial = SupermaskMLP(expected, {n: 1 for n in ("fc1", "fc2", "fc3")},
                           score_seed=0).scores()  # same shapes, to compare against
    final = state["scores"]["final"]
    assert any(not torch.equal(final[k], initial[k]) for k in final)
    kept = {n: int(m.sum()) for n, m in ((k.split(".")[0], v) for k, v in state["masks"].items())}
    assert masks_from_scores(state["scores"]["early_stop"], kept).keys() == state["masks"].keys()
    for key, mask in masks_from_scores(state["scores"]["early_stop"], kept).items():
        assert torch.equal(mask, state["masks"][key])
    for key, mask in masks_from_scores(final, kept).items():
        assert torch.equal(mask, state["final_masks"][key])


def test_learns_far_above_chance(done_run):
    run, _ = done_run
    assert run.read_round_metrics(0)["ticket"]["test_acc_at_early_stop"] > 0.5  # chance: 0.1


# ------------------------------------------------------------------------ store

def test_config_hashes_apart_from_tickets_and_by_keep():
    ticket, mask = ExperimentConfig().validate(), SupermaskConfig().validate()
    assert ticket.run_id() != mask.run_id()
    other = SupermaskConfig()
    other.supermask.keep = 0.3
    assert other.validate().run_id() != mask.run_id()
    explicit = SupermaskConfig()
    explicit.supermask.score_lr = mask.supermask.score_lr  # the resolved default
    assert explicit.validate().run_id() == mask.run_id()


def test_run_reads_back_as_a_supermask_and_lists_as_one_round(done_run):
    run, cfg = done_run
    raw = json.loads(run.config_path.read_text())
    assert raw["kind"] == "supermask"
    stored = Run(run.path).read_config()
    assert isinstance(stored, SupermaskConfig)
    assert stored.canonical_json() == cfg.canonical_json()
    (listed,) = [r for r in list_runs(run.path.parent) if r["run_id"] == run.run_id]
    assert (listed["rounds_done"], listed["rounds_total"]) == (1, 1)
    metrics = run.read_round_metrics(0)
    assert set(metrics) == {"round", "ticket", "controls", "sparsity"}
    assert {"early_stop_iteration", "test_acc_at_early_stop", "pct_remaining",
            "pct_remaining_per_layer", "evals"} <= set(metrics["ticket"])


def test_prune_or_lottery_options_are_config_errors():
    cfg = SupermaskConfig()
    cfg.prune.rate = 0.5
    with pytest.raises(ConfigError, match=r"\[prune\] options do not apply"):
        cfg.validate()
    cfg = SupermaskConfig()
    cfg.lottery.rounds = 3
    with pytest.raises(ConfigError, match=r"\[lottery\] options do not apply"):
        cfg.validate()
    with pytest.raises(ConfigError, match="needs a SupermaskConfig"):
        find_supermask(ExperimentConfig(), "unused")


def test_complete_run_is_returned_without_loading_data(done_run, monkeypatch):
    run, cfg = done_run
    before = (run.round_dir(0) / "state.pt").stat().st_mtime_ns

    def no_data(*a, **k):
        raise AssertionError("a complete run must not load data")

    monkeypatch.setattr("lth_sparse.lottery.supermask.load_data_for", no_data)
    again = find_supermask(cfg, run.path.parent, progress=False, log=lambda s: None)
    assert again.path == run.path
    assert (run.round_dir(0) / "state.pt").stat().st_mtime_ns == before


def test_interrupted_run_resumes_from_stored_weights_to_the_same_result(data, tmp_path):
    cfg = tiny_supermask_config()
    first = find_supermask(cfg, tmp_path, data=data, progress=False, log=lambda s: None)
    reference = first.read_round_state(0)
    (first.round_dir(0) / "metrics.json").unlink()  # as if killed before the round was marked
    assert first.completed_rounds() == []
    again = find_supermask(cfg, tmp_path, data=data, progress=False, log=lambda s: None)
    state = again.read_round_state(0)
    for key in reference["masks"]:
        assert torch.equal(state["masks"][key], reference["masks"][key])
        assert torch.equal(state["final_masks"][key], reference["final_masks"][key])


# ------------------------------------------------------------------------ export and the CLI

def _masked_dense_forward(x, params, masks):
    h = x
    for i in range(3):
        name = f"fc{i + 1}"
        h = F.linear(h, params[f"{name}.weight"] * masks[f"{name}.weight"], params[f"{name}.bias"])
        h = torch.relu(h) if i < 2 else h
    return h


@pytest.mark.parametrize("weights,mask_key", [("early-stop", "masks"), ("final", "final_masks")])
def test_exported_ticket_runs_the_masked_dense_forward(done_run, data, tmp_path, weights, mask_key):
    run, _ = done_run
    out = tmp_path / "supermask.safetensors"
    assert main(["export", str(run.path), "-o", str(out), "--weights", weights]) == 0
    state = run.read_round_state(0)
    layers, meta = read_ticket(out)
    for name, csr, _ in layers:
        assert csr.nnz == int(state[mask_key][f"{name}.weight"].sum())
    ticket = load_ticket(out)
    x = data.test.images
    with torch.no_grad():
        expected = _masked_dense_forward(x, state["early_stop"], state[mask_key])
        torch.testing.assert_close(ticket(x), expected, **TOL[torch.float32])
    if weights == "early-stop":
        acc = (expected.argmax(1) == data.test.labels).float().mean().item()
        assert acc == pytest.approx(meta["metadata"]["accuracy"]["test"], abs=1e-9)


def test_show_and_train_ticket_treat_it_like_a_ticket(done_run, data, capsys):
    from lth_sparse.bridge.retrain import train_ticket

    run, _ = done_run
    assert main(["show", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "supermask (edge-popup) on frozen signed_constant weights" in out
    results = train_ticket(run.path, iterations=20, data=data, progress=False, log=lambda s: None)
    assert set(results) == {"sparse", "dense"}


def _files(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("flags,message", [
    (["--keep", "0"], "supermask.keep must be a fraction in (0, 1]"),
    (["--keep", "1.5"], "supermask.keep must be a fraction in (0, 1]"),
    (["--keep", "lots"], "supermask.keep: cannot use 'lots'"),
    (["--layer-keep", "fc9=0.5"], "unknown layer 'fc9'"),
    (["--layer-keep", "fc3=0"], "supermask.layer_keep[fc3] must be a fraction"),
    (["--score-optimizer", "rmsprop"], "supermask.score_optimizer must be one of adam, sgd"),
    (["--score-schedule", "step"], "supermask.score_schedule must be one of"),
    (["--score-lr", "-1"], "supermask.score_lr must be a positive number"),
    (["--score-momentum", "1.0"], "supermask.score_momentum"),
    (["--init", "xavier_magic"], "model.init must be one of"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys, flags, message):
    runs = tmp_path / "runs"
    code = main(["find-supermask", "--runs-dir", str(runs), "--data-dir", str(tmp_path / "none"),
                 *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert _files(runs) == []


@pytest.mark.parametrize("flag", ["--rate", "--rounds", "--lr"])
def test_ticket_only_flags_are_usage_errors(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as exc:
        main(["find-supermask", "--runs-dir", str(tmp_path), flag, "0.5"])
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_config_file_with_prune_section_exit_2(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"prune": {"rate": 0.5}, "supermask": {"keep": 0.2}}))
    assert main(["find-supermask", "--config", str(cfg), "--runs-dir", str(tmp_path / "r")]) == 2
    assert "[prune] options do not apply" in capsys.readouterr().err
    assert _files(tmp_path / "r") == []


def test_cli_finds_a_supermask_and_resumes(tmp_path, capsys, monkeypatch, data):
    monkeypatch.setattr("lth_sparse.lottery.supermask.load_data_for", lambda cfg: data)
    argv = ["find-supermask", "--runs-dir", str(tmp_path), "--hidden", "32,16", "--iterations",
            "40", "--eval-every", "20", "--keep", "0.2", "--layer-keep", "fc3=0.6",
            "--init", "kaiming_normal", "--score-optimizer", "sgd"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    run = open_run(run_dir)
    cfg = run.read_config()
    assert (cfg.model.init, cfg.supermask.score_optimizer, cfg.supermask.score_lr) == \
        ("kaiming_normal", "sgd", 0.1)
    assert run.run_id in out and "% remaining" in out
    assert main(argv) == 0
    assert "already complete" in capsys.readouterr().out
