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
