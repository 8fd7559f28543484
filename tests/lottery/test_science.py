"""The lottery's scientific contract: schedule length under late rewinding, the one-shot output
rate, early stopping, and what each control is (mask, weights, minibatch order)."""
from __future__ import annotations

import pytest
import torch

from lth_sparse.lottery import rounds as rounds_mod
from lth_sparse.lottery import training as training_mod
from lth_sparse.lottery.config import TrainConfig, derived_seed
from lth_sparse.lottery.data import BatchSampler
from lth_sparse.lottery.models import MLP, build_model
from lth_sparse.lottery.pruning import get_masks, get_params
from lth_sparse.lottery.rounds import find_ticket
from lth_sparse.lottery.training import train
from tests.lottery.test_rounds import synthetic_dataset, tiny_config

QUIET = dict(progress=False, log=lambda s: None)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and stay fast on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class RecordingSampler(BatchSampler):
    """BatchSampler that logs every index batch it hands out, per sampler (= per training)."""
    log: list[tuple[int, list[torch.Tensor]]] = []

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.drawn: list[torch.Tensor] = []
        RecordingSampler.log.append((self.seed, self.drawn))

    def next(self):
        idx = super().next()
        self.drawn.append(idx.clone())
        return idx


@pytest.fixture
def recorded_batches(monkeypatch):
    RecordingSampler.log = []
    monkeypatch.setattr(training_mod, "BatchSampler", RecordingSampler)
    return RecordingSampler.log


@pytest.fixture
def recorded_trainings(monkeypatch):
    """Masks and raw parameters each lottery training starts from, keyed by its description."""
    calls: dict[str, dict] = {}
    real_train = rounds_mod.train

    def spy(model, *args, desc="train", **kw):
        calls[desc] = {"masks": get_masks(model), "params": get_params(model)}
        return real_train(model, *args, desc=desc, **kw)

    monkeypatch.setattr(rounds_mod, "train", spy)
    return calls


# ------------------------------------------------------------------------ data order

@pytest.mark.parametrize("k", range(0, 11))
def test_sampler_seek_continues_the_order_across_epochs(k):
    fresh = BatchSampler(100, 30, seed=7)  # 3 batches per epoch, 10 ragged samples dropped
    drawn = [fresh.next() for _ in range(k + 2)]
    sought = BatchSampler(100, 30, seed=7).seek(k)
    assert torch.equal(sought.next(), drawn[k])
    assert torch.equal(sought.next(), drawn[k + 1])


def test_late_rewinding_trains_the_remaining_iterations_of_the_same_schedule(tmp_path,
                                                                             recorded_batches):
    T, k = 40, 20
    cfg = tiny_config(train__iterations=T, train__eval_every=10, lottery__rewind_iteration=k,
                      lottery__rounds=1, lottery__controls=("reinit", "random_prune", "finetune"))
    run = find_ticket(cfg, tmp_path, data=synthetic_dataset(), **QUIET)
    dense_seed, round1_seed = (derived_seed(cfg.train.seed, r, "data") for r in (0, 1))
    assert [len(b) for _, b in recorded_batches] == [T] + [T - k] * 4  # not k + T
    assert recorded_batches[0][0] == dense_seed
    # ticket and every control take batches k+1..T of round 1's order, in the same order
    reference = BatchSampler(len(synthetic_dataset().train), cfg.train.batch_size, round1_seed)
    expected = [reference.next() for _ in range(T)][k:]
    for seed, batches in recorded_batches[1:]:
        assert seed == round1_seed
        assert all(torch.equal(a, b) for a, b in zip(batches, expected))
    m = run.read_round_metrics(1)
    for result in (m["ticket"], *m["controls"].values()):
        iterations = [row[0] for row in result["evals"]]
        assert iterations == [20, 30, 40] and result["start_iteration"] == k
        assert k <= result["early_stop_iteration"] <= T


def test_rewind_iteration_must_leave_iterations_to_train():
    from lth_sparse.errors import ConfigError
    with pytest.raises(ConfigError, match="lottery.rewind_iteration"):
        tiny_config(train__iterations=40, lottery__rewind_iteration=40)


# ------------------------------------------------------------------------ one-shot rate

def test_one_shot_prunes_the_output_layer_at_half_the_rate(tmp_path):
    cfg = tiny_config(prune__target_sparsity=0.8, lottery__rounds=1, lottery__controls=())
    run = find_ticket(cfg, tmp_path, data=synthetic_dataset(), **QUIET)
    layers = run.read_round_metrics(1)["sparsity"]["layers"]
    for name, expected_pruned in (("fc1", 0.8), ("fc2", 0.8), ("fc3", 0.4)):
        pruned = layers[name]["total"] - layers[name]["kept"]
        assert abs(pruned - expected_pruned * layers[name]["total"]) <= 1, name


def test_iterative_target_sparsity_keeps_the_half_output_rate_every_round(tmp_path):
    cfg = tiny_config(prune__target_sparsity=0.9, lottery__rounds=3, lottery__controls=())
    run = find_ticket(cfg, tmp_path, data=synthetic_dataset(), **QUIET)
    q = 1 - 0.1 ** (1 / 3)
    for r in range(1, 4):
        layers = run.read_round_metrics(r)["sparsity"]["layers"]
        assert abs(layers["fc1"]["remaining"] - (1 - q) ** r) < 0.01
        assert abs(layers["fc3"]["remaining"] - (1 - q / 2) ** r) < 0.01


# ------------------------------------------------------------------------ early stopping

def test_early_stop_is_the_min_validation_loss_and_reports_test_acc_there(monkeypatch):
    data = synthetic_dataset()
    # five evaluations (iterations 0, 10, 20, 30, 40): validation loss is lowest at 20,
    # test accuracy keeps rising, so "best test accuracy" would be a different (wrong) answer
    val = iter([(1.0, 0.1), (0.5, 0.5), (0.3, 0.6), (0.4, 0.7), (0.35, 0.65)])
    test = iter([(1.0, 0.11), (0.6, 0.55), (0.5, 0.71), (0.45, 0.9), (0.4, 0.95)])
    seen_params = []

    def scripted_evaluate(model, split):
        if split is data.val:
            seen_params.append(get_params(model))
            return next(val)
        if split is data.test:
            return next(test)
        return (0.0, 0.99)  # the final training-set accuracy

    monkeypatch.setattr(training_mod, "evaluate", scripted_evaluate)
    model = MLP(hidden=(32, 16), seed=0)
    res = train(model, data, TrainConfig(iterations=40, eval_every=10, batch_size=30),
                data_seed=3, progress=False, snapshot=get_params)
    assert [e.iteration for e in res.evals] == [0, 10, 20, 30, 40]
    assert res.early_stop_iteration == 20
    assert res.test_acc_at_early_stop == 0.71
    assert res.val_loss_at_early_stop == 0.3
    assert res.final_test_acc == 0.95 and res.max_val_acc == 0.7
    for key, value in seen_params[2].items():  # the weights kept are those of that evaluation
        assert torch.equal(res.early_stop_params[key], value)
    assert not torch.equal(res.early_stop_params["fc1.weight"], seen_params[4]["fc1.weight"])


# ------------------------------------------------------------------------ controls

def test_controls_use_the_tickets_mask_counts_and_minibatch_order(tmp_path, recorded_batches,
                                                                   recorded_trainings):
    cfg = tiny_config(lottery__rounds=1, lottery__controls=("reinit", "random_prune", "finetune"))
    run = find_ticket(cfg, tmp_path, data=synthetic_dataset(), **QUIET)
    ticket_masks = run.read_round_state(1)["masks"]
    rewind = run.read_rewind()
    calls = {desc.split()[-1]: c for desc, c in recorded_trainings.items() if "round 1" in desc}
    assert set(calls) == {"ticket", "reinit", "random_prune", "finetune"}

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(calls["ticket"]["masks"], ticket_masks) and same(calls["ticket"]["params"], rewind)
    # reinit: exactly the ticket's mask, fresh weights (from the same init scheme, another seed)
    assert same(calls["reinit"]["masks"], ticket_masks)
    fresh = get_params(build_model(cfg, seed=derived_seed(cfg.train.seed, 1, "reinit")))
    assert same(calls["reinit"]["params"], fresh)
    # (biases start at zero under both inits; every weight matrix is new)
    assert all(not torch.equal(calls["reinit"]["params"][k], rewind[k]) for k in ticket_masks)
    # random pruning: same survivors per layer, another mask, the ticket's rewind weights
    rnd = calls["random_prune"]["masks"]
    assert rnd.keys() == ticket_masks.keys()
    for key, mask in ticket_masks.items():
        assert int(rnd[key].sum()) == int(mask.sum()) and not torch.equal(rnd[key], mask)
    assert same(calls["random_prune"]["params"], rewind)
    # finetune: the ticket's mask, round 0's trained weights
    assert same(calls["finetune"]["masks"], ticket_masks)
    assert same(calls["finetune"]["params"], run.read_round_state(0)["final"])
    # every training of round 1 drew the very same minibatches
    round1 = recorded_batches[1:]
    assert len(round1) == 4
    for _, batches in round1[1:]:
        assert len(batches) == len(round1[0][1])
        assert all(torch.equal(a, b) for a, b in zip(batches, round1[0][1]))
