"""The timer's bookkeeping (what it returns), never how fast anything is."""
from __future__ import annotations

from lth_sparse.bench.timing import summarize, time_cpu, time_fn


def test_summarize_quantiles():
    s = summarize([4.0, 1.0, 3.0, 2.0, 5.0], "t")
    assert (s["min_ms"], s["q25_ms"], s["median_ms"], s["q75_ms"], s["max_ms"]) == (
        1.0, 2.0, 3.0, 4.0, 5.0)
    assert s["repeats"] == 5 and s["timer"] == "t"


def test_time_cpu_takes_the_asked_samples_and_calls_fn():
    calls = []
    s = time_cpu(lambda: calls.append(1), repeats=4)
    assert s["repeats"] == 4 and len(calls) >= 4 + 1  # warm-up, then >= 1 call per sample
    cold = time_cpu(lambda: calls.append(1), repeats=2, cold=True)
    assert cold["repeats"] == 2 and cold["timer"] == "perf_counter+flush"
    assert time_fn(lambda: None, "cpu", budget_s=0.01, repeats=3)["repeats"] == 3
