"""The conventional training loop: the same pixels and the same number of steps as ours."""

import torch

from vibbench import create_model
from vibbench.bench.conventional import TorchvisionStyleMNIST, to_uint8, train_conventional
from vibbench.training.config import TrainConfig


def test_the_torchvision_style_dataset_gives_our_pixels_exactly(synthetic):
    images = synthetic.train.images[:10]
    ds = TorchvisionStyleMNIST(to_uint8(images), synthetic.train.labels[:10])
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert torch.equal(x, images[3]) and y == int(synthetic.train.labels[3])


def test_conventional_loop_trains_on_the_same_number_of_batches(synthetic):
    n, batch = 400, 25
    cfg = TrainConfig(dataset="synthetic", epochs=1, batch_size=batch, lr=1e-3)
    torch.manual_seed(0)
    model = create_model("mlp_vib")
    result = train_conventional(model, to_uint8(synthetic.train.images[:n]), synthetic.train.labels[:n], cfg, seed=0)
    assert result.steps == cfg.epochs * (n // batch)  # what train_model takes on the same data
    assert len(result.losses) == len(result.train_accuracy) == result.steps
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < first - 0.3  # it learns
    assert not model.training and result.examples_per_second > 0
