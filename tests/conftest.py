"""Shared fixtures: small trained models on the synthetic dataset (no network, seconds on 2 cores)."""

import pytest
import torch

from vibbench import create_model
from vibbench.config import TrainConfig
from vibbench.data import load_dataset
from vibbench.train import train_model


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
