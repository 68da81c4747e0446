"""bf16 only where the hardware multiplies it natively."""

import pytest
import torch

from vibbench import VibbenchError
from vibbench.core import precision


@pytest.fixture
def cpu(monkeypatch):
    """Simulates a CPU: its torch capability and whether oneDNN has a bf16 kernel."""

    def set_cpu(capability: str, onednn_bf16: bool):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
        precision.cpu_has_native_bf16.cache_clear()

    yield set_cpu
    precision.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("capability, onednn, native", [("AVX2", False, False), ("AVX2", True, False), ("AVX512", False, False), ("AVX512", True, True)])
def test_bf16_is_native_only_with_avx512_and_a_onednn_kernel(cpu, capability, onednn, native):
    cpu(capability, onednn)
    assert precision.cpu_has_native_bf16() is native
    assert precision.bf16_support("cpu")[0] is native


def test_bf16_is_refused_on_a_cpu_without_it_with_the_reason(cpu):
    cpu("AVX2", False)
    with pytest.raises(VibbenchError, match=r"bf16 refused: this CPU has no native bf16 \(torch CPU capability AVX2.*train in fp32"):
        precision.check_native_precision("cpu", "bf16")
    assert precision.check_native_precision("cpu", "fp32") == "fp32"  # fp32 is never refused
    cpu("AVX512", True)
    assert precision.check_native_precision("cpu", "bf16") == "bf16"


def test_a_run_in_bf16_is_refused_before_it_loads_or_trains_anything(cpu, tmp_path):
    from vibbench.runs.config import make_run_config
    from vibbench.runs.runner import run

    cpu("AVX2", False)
    cfg = make_run_config("smoke", dataset="synthetic", device="cpu", train={"precision": "bf16"})
    with pytest.raises(VibbenchError, match="bf16 refused"):
        run(cfg, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("jobs/*"))


def test_a_unit_refuses_bf16_training_only_when_it_has_something_to_train(cpu, tmp_path, monkeypatch):
    """A model trained in bf16 elsewhere (cached) is evaluated on a CPU without native bf16; one still to train is
    refused there, before any work."""
    from vibbench.runs import jobs
    from vibbench.runs.config import make_run_config

    cpu("AVX2", False)
    cfg = make_run_config("smoke", dataset="synthetic", device="cpu", evaluate=False, train={"precision": "bf16"})
    member = [(cfg.models[0], 0)]
    done = []
    monkeypatch.setattr(jobs, "train_jobs", lambda cfg, members, *a: done.append("trained") or {m: {} for m in members})
    monkeypatch.setattr(jobs, "evaluate_job", lambda *a: done.append("evaluated") or [])
    monkeypatch.setattr(jobs, "cached_result", lambda *a, **k: None)  # not trained yet
    with pytest.raises(VibbenchError, match="bf16 refused"):
        jobs.run_unit(cfg, member, tmp_path / "cache", None, "single")
    assert done == []
    monkeypatch.setattr(jobs, "cached_result", lambda *a, **k: {"job_hash": "cached"})  # trained (in bf16) elsewhere
    jobs.run_unit(cfg, member, tmp_path / "cache", None, "single")
    assert done == ["trained", "evaluated"]  # train_jobs finds it cached and trains nothing


def test_provenance_records_the_cpu_capability():
    from vibbench.runs.provenance import provenance

    prov = provenance(config_hash="x", run_id="r", seeds=[0], device="cpu")
    assert prov["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
    assert isinstance(prov["cpu_native_bf16"], bool)
