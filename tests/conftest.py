"""Shared fixtures: small trained models on the synthetic dataset (no network, seconds on 2 cores); a full disk."""

import errno
import os

import pytest
import torch

from vibbench import create_model
from vibbench.training.config import TrainConfig
from vibbench.data.datasets import load_dataset
from vibbench.training.single import train_model


@pytest.fixture(scope="session")
def synthetic():
    return load_dataset("synthetic")


def _trained(name, data, epochs=2):
    torch.manual_seed(0)
    model = create_model(name)
    cfg = TrainConfig(dataset="synthetic", epochs=epochs, batch_size=50, lr=1e-3)
    train_model(model, data.train.images, data.train.labels, cfg, seed=0, label=name)
    return model.eval()


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for a module of tiny tensors, where more threads only wait on each other;
    the count from before is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_mlp(synthetic):
    """A deterministic MLP trained briefly on synthetic data (well above chance, far from perfect)."""
    return _trained("mlp_deterministic", synthetic)


@pytest.fixture(scope="session")
def trained_vib(synthetic):
    return _trained("mlp_vib", synthetic)


@pytest.fixture
def full_disk(monkeypatch):
    """os.fsync fails with ENOSPC for temporary files of targets named in `full`, as delayed allocation does on a full disk."""
    full: set[str] = set()
    real = os.fsync

    def fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if any(name.startswith(f".{target}.") for target in full):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    monkeypatch.setattr(os, "fsync", fsync)
    return full


@pytest.fixture
def plugin_registry():
    """Backbones, methods and plugin modules a test registers are taken back afterwards (the registry is global)."""
    import sys

    from vibbench.models.backbones import BACKBONES, CODES, FACTORIES
    from vibbench.models.methods import METHODS
    from vibbench.runs.config import _resolve

    tables = (BACKBONES, FACTORIES, CODES, METHODS)
    saved = [dict(table) for table in tables]
    modules = set(sys.modules)
    yield
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)
    for name in set(sys.modules) - modules:
        if name.startswith(("vibbench_plugin_", "vbtest_")):
            del sys.modules[name]
    _resolve.cache_clear()  # specs resolved while a plugin was registered


TINY_PLUGIN = '''
import vibbench


@vibbench.register_backbone("tiny")
def make_tiny(dropout: float = 0.0, hidden: int = 32):
    from torch import nn

    from vibbench.models.layers import Backbone, Dropout

    return Backbone(nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), Dropout(dropout, hidden)), hidden)


vibbench.register_method("vib_smooth", stochastic=True, beta=1e-3, label_smoothing=0.1)
'''
"""A plugin: a small backbone `tiny` (every method on it: tiny_vib, ...) and a method `vib_smooth` (on every backbone)."""


@pytest.fixture
def tiny_plugin(tmp_path, plugin_registry):
    """The path of a FILE.py plugin (TINY_PLUGIN), not yet loaded."""
    path = tmp_path / "tinyplugin.py"
    path.write_text(TINY_PLUGIN)
    return path
