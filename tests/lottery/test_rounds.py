"""Lottery pipeline invariants on tiny synthetic data: pruning, rewinding, controls, resume."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lth_sparse.errors import ConfigError, RunStoreError
from lth_sparse.lottery.config import ExperimentConfig, TrainConfig
from lth_sparse.lottery.data import Dataset, Split
from lth_sparse.lottery.models import INIT_SCHEMES, MLP
from lth_sparse.lottery.pruning import (
    get_masks,
    get_params,
    load_params,
    prune_round,
    random_masks_like,
    set_masks,
)
from lth_sparse.lottery.rounds import desired_remaining, find_ticket
from lth_sparse.lottery.store import Run, list_runs
from lth_sparse.lottery.training import train


def synthetic_dataset(seed: int = 0, n_train=600, n_val=100, n_test=200) -> Dataset:
    """784-dim Gaussian blobs, 10 classes: learnable in a few hundred iterations."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 784, generator=g)

    def split(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = centers[y] + 2.0 * torch.randn(n, 784, generator=g)
        return Split(x, y)

    return Dataset(split(n_train), split(n_val), split(n_test), "synthetic")


def tiny_config(**overrides) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.model.hidden = (32, 16)
    cfg.train.iterations = 40
    cfg.train.eval_every = 20
    cfg.train.batch_size = 30
    cfg.lottery.rounds = 2
    cfg.lottery.controls = ("reinit", "random_prune", "finetune")
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg.validate()


RATES = {"fc1": 0.2, "fc2": 0.2, "fc3": 0.1}


# ------------------------------------------------------------------------ models

@pytest.mark.parametrize("scheme", sorted(INIT_SCHEMES))
def test_init_is_seeded_and_scheme_specific(scheme):
    a, b, c = MLP(init=scheme, seed=3), MLP(init=scheme, seed=3), MLP(init=scheme, seed=4)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)


def test_glorot_normal_has_paper_std():
    w = MLP(seed=0).layers[0].weight  # 784 -> 300
    expected = (2.0 / (784 + 300)) ** 0.5
    assert abs(w.std().item() - expected) / expected < 0.02


def test_unknown_init_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown init scheme"):
        MLP(init="xavier_magic")


# ------------------------------------------------------------------------ pruning

def _prune_rounds(model, rounds, method="layerwise", rates=RATES):
    history = []
    for r in range(rounds):
        before = get_masks(model)
        weights = {k: v.clone() for k, v in get_params(model).items()}
        prune_round(model, method, rates, seed=r)
        history.append((before, weights, get_masks(model)))
        with torch.no_grad():  # pretend training moved the weights
            for layer in model.layers:
                layer.weight_orig.add_(0.01 * torch.randn_like(layer.weight_orig))
    return history


@pytest.mark.parametrize("method", ["layerwise", "random"])
def test_each_round_prunes_the_target_fraction_of_survivors_within_one_weight(method):
    model = MLP(hidden=(37, 19), seed=0)
    for before, _, after in _prune_rounds(model, 4, method):
        for name, rate in RATES.items():
            key = f"{name}.weight"
            n_before = before[key].sum().item() if key in before else model.layers[
                int(name[2:]) - 1].weight.numel()
            pruned = n_before - after[key].sum().item()
            assert abs(pruned - rate * n_before) <= 1


def test_masks_are_nested_across_rounds():
    model = MLP(hidden=(37, 19), seed=1)
    history = _prune_rounds(model, 4)
    for before, _, after in history[1:]:
        for key, mask in after.items():
            assert not (mask & ~before[key]).any(), "a pruned weight came back"


@pytest.mark.parametrize("method", ["layerwise", "global"])
def test_magnitude_pruning_removes_only_the_smallest_survivors(method):
    model = MLP(hidden=(37, 19), seed=2)
    for before, weights, after in _prune_rounds(model, 3, method):
        if method == "layerwise":
            groups = [[k] for k in after]
        else:
            groups = [list(after)]
        for keys in groups:
            newly = torch.cat([weights[k][(before.get(k, torch.ones_like(after[k])) & ~after[k])].abs()
                               for k in keys])
            kept = torch.cat([weights[k][after[k]].abs() for k in keys])
            assert newly.numel() > 0
            assert newly.max() <= kept.min()


def test_global_pruning_hits_the_overall_fraction():
    model = MLP(hidden=(37, 19), seed=3)
    total = sum(layer.weight.numel() for layer in model.layers)
    prune_round(model, "global", {"fc1": 0.3, "fc2": 0.3, "fc3": 0.3})
    kept = sum(m.sum().item() for m in get_masks(model).values())
    assert abs((total - kept) - 0.3 * total) <= 1


def test_pruned_weights_stay_zero_and_get_no_gradient():
    data = synthetic_dataset()
    model = MLP(hidden=(32, 16), seed=0)
    prune_round(model, "layerwise", {"fc1": 0.5, "fc2": 0.5, "fc3": 0.5})
    masks = get_masks(model)
    raw_before = get_params(model)
    x, y = data.train.images[:30], data.train.labels[:30]
    F.cross_entropy(model(x), y).backward()
    for name, layer in zip(["fc1", "fc2", "fc3"], model.layers):
        pruned = ~masks[f"{name}.weight"]
        assert (layer.weight_orig.grad[pruned] == 0).all()
        assert (layer.weight_orig.grad[~pruned] != 0).any()
    train(model, data, TrainConfig(iterations=40, eval_every=20, batch_size=30), data_seed=0, snapshot=get_params,
          progress=False)
    raw_after = get_params(model)
    for name, layer in zip(["fc1", "fc2", "fc3"], model.layers):
        pruned = ~masks[f"{name}.weight"]
        assert (layer.weight[pruned] == 0).all()
        # Adam never moved the raw values behind the mask either
        assert torch.equal(raw_after[f"{name}.weight"][pruned], raw_before[f"{name}.weight"][pruned])


def test_rewind_restores_exactly_and_keeps_masks():
    model = MLP(hidden=(32, 16), seed=5)
    init = get_params(model)
    prune_round(model, "layerwise", RATES)
    masks = get_masks(model)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight_orig.mul_(3.0)
    load_params(model, init)
    assert all(torch.equal(get_params(model)[k], v) for k, v in init.items())
    assert all(torch.equal(get_masks(model)[k], m) for k, m in masks.items())
    for name, layer in zip(["fc1", "fc2", "fc3"], model.layers):
        assert torch.equal(layer.weight, init[f"{name}.weight"] * masks[f"{name}.weight"])


def test_set_masks_replaces_pruning_and_random_masks_keep_counts():
    model = MLP(hidden=(32, 16), seed=0)
    prune_round(model, "layerwise", RATES)
    masks = get_masks(model)
    rnd = random_masks_like(model, masks, seed=1)
    assert all(rnd[k].sum() == m.sum() and not torch.equal(rnd[k], m) for k, m in masks.items())
    set_masks(model, rnd)
    assert all(torch.equal(get_masks(model)[k], m) for k, m in rnd.items())


def test_bias_pruning_is_optional():
    model = MLP(hidden=(32, 16), seed=0)
    prune_round(model, "layerwise", RATES, prune_bias=True)
    assert "fc1.bias" in get_masks(model)
    model2 = MLP(hidden=(32, 16), seed=0)
    prune_round(model2, "layerwise", RATES)
    assert "fc1.bias" not in get_masks(model2)


# ------------------------------------------------------------------------ config

def test_per_round_rate_from_target_sparsity():
    cfg = tiny_config(prune__target_sparsity=0.9, lottery__rounds=3)
    rates = cfg.per_round_rates()
    q = 1 - 0.1 ** (1 / 3)
    assert all(abs(rates[n] - q) < 1e-12 for n in ("fc1", "fc2"))
    assert abs(rates["fc3"] - q / 2) < 1e-12  # the output layer at half the hidden rate
    one_shot = tiny_config(prune__target_sparsity=0.9, lottery__rounds=1).per_round_rates()
    assert abs(one_shot["fc1"] - 0.9) < 1e-12 and abs(one_shot["fc3"] - 0.45) < 1e-12


def test_paper_schedule_remaining_fractions():
    cfg = ExperimentConfig().validate()
    total = {"fc1": 784 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
    for rounds, paper in [(3, 51.3), (7, 21.1), (12, 6.9), (15, 3.6), (18, 1.9)]:
        rem = desired_remaining(cfg, rounds)
        overall = sum(rem[k] * n for k, n in total.items()) / sum(total.values())
        assert abs(100 * overall - paper) < 0.1


@pytest.mark.parametrize("section,name,value,match", [
    ("prune", "rate", 1.0, "prune.rate must be a fraction"),
    ("prune", "rate", -0.1, "prune.rate must be a fraction"),
    ("train", "iterations", -5, "train.iterations"),
    ("model", "init", "nope", "model.init must be one of"),
    ("prune", "method", "lottery", "prune.method must be one of"),
    ("lottery", "controls", ("reinit", "magic"), "lottery.controls"),
    ("prune", "layer_rates", {"fc9": 0.1}, "unknown layer 'fc9'"),
])
def test_bad_config_values_are_named(section, name, value, match):
    cfg = ExperimentConfig()
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ConfigError, match=match):
        cfg.validate()


def test_run_id_ignores_data_dir_but_not_hyperparameters():
    a, b = tiny_config(), tiny_config()
    b.data.data_dir = "/elsewhere"
    assert a.run_id() == b.run_id()
    b.train.lr = 1e-2
    assert a.run_id() != b.run_id()


# ------------------------------------------------------------------------ lottery + store

def test_find_ticket_rounds_controls_and_index(tmp_path):
    cfg = tiny_config()
    data = synthetic_dataset()
    run = find_ticket(cfg, tmp_path, data=data, progress=False, log=lambda s: None)
    metrics = run.all_metrics()
    assert [m["round"] for m in metrics] == [0, 1, 2]
    remaining = [m["ticket"]["pct_remaining"] for m in metrics]
    assert remaining[0] == 100.0 and all(a > b for a, b in zip(remaining, remaining[1:]))
    for m in metrics[1:]:
        assert set(m["controls"]) == {"reinit", "random_prune", "finetune"}
        for c in m["controls"].values():  # controls run at the ticket's sparsity
            assert abs(c["pct_remaining"] - m["ticket"]["pct_remaining"]) < 1e-9
        s = m["sparsity"]
        assert abs(s["remaining"] - s["desired"]) < 0.01
    # the ticket learns the blobs far above chance
    assert metrics[0]["ticket"]["test_acc_at_early_stop"] > 0.5
    # masks nested across stored rounds; rewound weights are the stored init
    states = [run.read_round_state(r) for r in range(3)]
    for prev, cur in zip(states[1:], states[2:]):
        for k, m in cur["masks"].items():
            assert not (m & ~prev["masks"][k]).any()
    listed = list_runs(tmp_path)
    assert [(r["run_id"], r["rounds_done"], r["rounds_total"]) for r in listed] == [
        (run.run_id, 3, cfg.lottery.rounds + 1)]


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(lottery__controls=("reinit", "random_prune"))
    data = synthetic_dataset()
    quiet = dict(data=data, progress=False, log=lambda s: None)
    full = find_ticket(cfg, tmp_path / "a", **quiet)
    part = find_ticket(cfg, tmp_path / "b", stop_after_round=1, **quiet)
    assert part.completed_rounds() == [0, 1]
    torch.manual_seed(123)  # a resumed process starts with another global RNG state
    resumed = find_ticket(cfg, tmp_path / "b", **quiet)
    assert resumed.completed_rounds() == [0, 1, 2]
    for r in range(3):
        sa, sb = full.read_round_state(r), resumed.read_round_state(r)
        for part_name in ("masks", "final", "early_stop"):
            for k in sa[part_name]:
                assert torch.equal(sa[part_name][k], sb[part_name][k]), (r, part_name, k)
        ma, mb = full.read_round_metrics(r), resumed.read_round_metrics(r)
        for kind in ("ticket", *ma["controls"]):
            a = ma["ticket"] if kind == "ticket" else ma["controls"][kind]
            b = mb["ticket"] if kind == "ticket" else mb["controls"][kind]
            assert a["evals"] == b["evals"]


def test_rerun_of_a_complete_run_trains_nothing(tmp_path):
    cfg = tiny_config(lottery__rounds=1, lottery__controls=())
    data = synthetic_dataset()
    run = find_ticket(cfg, tmp_path, data=data, progress=False, log=lambda s: None)
    mtime = (run.round_dir(1) / "metrics.json").stat().st_mtime_ns
    logs = []
    find_ticket(cfg, tmp_path, data=data, progress=False, log=logs.append)
    assert (run.round_dir(1) / "metrics.json").stat().st_mtime_ns == mtime
    assert any("resuming" in line for line in logs)


def test_incompatible_store_version_is_refused(tmp_path):
    cfg = tiny_config(lottery__rounds=0)
    run = find_ticket(cfg, tmp_path, data=synthetic_dataset(), progress=False, log=lambda s: None)
    raw = json.loads(run.config_path.read_text())
    raw["store_format"] = 99
    run.config_path.write_text(json.dumps(raw))
    before = sorted(p.name for p in run.path.rglob("*"))
    with pytest.raises(RunStoreError, match="format 99"):
        find_ticket(cfg, tmp_path, data=synthetic_dataset(), progress=False, log=lambda s: None)
    assert sorted(p.name for p in run.path.rglob("*")) == before
    with pytest.raises(RunStoreError, match="format 99"):
        Run(run.path).read_config()


def test_late_rewind_weights_are_a_replay_of_the_first_k_steps(tmp_path):
    cfg = tiny_config(lottery__rewind_iteration=20, lottery__rounds=0, lottery__controls=())
    data = synthetic_dataset()
    run = find_ticket(cfg, tmp_path, data=data, progress=False, log=lambda s: None)
    from lth_sparse.lottery.config import derived_seed
    from lth_sparse.lottery.models import build_model
    replay = build_model(cfg)
    short = TrainConfig(iterations=20, eval_every=20, batch_size=cfg.train.batch_size,
                        lr=cfg.train.lr)
    train(replay, data, short, data_seed=derived_seed(cfg.train.seed, 0, "data"), progress=False,
          snapshot=get_params)
    rewind = run.read_rewind()
    for key, value in get_params(replay).items():
        assert torch.equal(rewind[key], value), key


def test_original_lottery_rewinds_to_the_stored_init(tmp_path):
    cfg = tiny_config(lottery__rounds=1, lottery__controls=())
    run = find_ticket(cfg, tmp_path, data=synthetic_dataset(), progress=False, log=lambda s: None)
    init = get_params(MLP(hidden=(32, 16), seed=cfg.train.seed))
    rewind = run.read_rewind()
    assert all(torch.equal(rewind[k], v) for k, v in init.items())


def test_python_config_with_int_rates_resumes(tmp_path):
    cfg = tiny_config(lottery__rounds=0, lottery__controls=())
    cfg.prune.output_rate = 0  # an int where a float is declared
    cfg.validate()
    data = synthetic_dataset()
    find_ticket(cfg, tmp_path, data=data, progress=False, log=lambda s: None)
    again = tiny_config(lottery__rounds=0, lottery__controls=())
    again.prune.output_rate = 0.0
    assert again.run_id() == cfg.run_id()
    find_ticket(cfg, tmp_path, data=data, progress=False, log=lambda s: None)  # no hash mismatch
