"""Warm-up and interleaved medians."""

import torch

from vibbench.bench.timing import interleaved_medians, synchronized, warm_up


def test_warm_up_times_only_the_compiling_call():
    calls = []
    assert warm_up(lambda: calls.append(1), "eager", 2) is None and len(calls) == 2
    seconds = warm_up(lambda: calls.append(1), "compile", 2)
    assert seconds is not None and seconds >= 0 and len(calls) == 5  # the compiling call, then the warm-up


def test_interleaved_medians_time_every_call_in_every_round():
    counts = {"a": 0, "b": 0}

    def call(name):
        def fn():
            counts[name] += 1

        return fn

    medians = interleaved_medians({name: call(name) for name in counts}, min_run_time=0.001, repeats=2)
    assert set(medians) == {"a", "b"}
    for name, (median, runs) in medians.items():
        assert median > 0 and runs >= 2 and counts[name] >= runs


def test_a_cuda_call_returns_after_the_device_synchronized(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    cuda = torch.device("cuda")
    assert synchronized(lambda: events.append("call") or 7, cuda)() == 7
    assert events == ["call", ("sync", cuda)]
    fn = lambda: None  # noqa: E731
    assert synchronized(fn, torch.device("cpu")) is fn  # nothing to wait for on the CPU
