import torch

from trilemma.classifier import MnistClassifier, train_classifier
from trilemma.cli import main


def test_training_is_reproducible_under_a_seed(mnist):
    images, labels = mnist["train"].images[:512], mnist["train"].labels[:512]
    first = train_classifier(images, labels, epochs=1, seed=3, batch_size=128, progress=False)
    second = train_classifier(images, labels, epochs=1, seed=3, batch_size=128, progress=False)
    other = train_classifier(images, labels, epochs=1, seed=4, batch_size=128, progress=False)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert not torch.equal(first.head[1].weight, other.head[1].weight)


def test_feature_and_logit_shapes():
    features, logits = MnistClassifier().eval().features_and_logits(torch.rand(5, 1, 28, 28))
    assert features.shape == (5, 128) and logits.shape == (5, 10)


def test_classifier_info_command(capsys):
    assert main(["classifier", "info"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy 0.99" in out and "sha256" in out


def test_each_load_is_its_own_module():
    """torch-fidelity moves its extractor's module to the GPU in place; that must not move anyone else's."""
    from trilemma.classifier import load_classifier

    first, second = load_classifier(), load_classifier()
    assert first is not second
    first.head[1].weight.data.zero_()  # stands in for an in-place move or change
    assert second.head[1].weight.abs().sum() > 0 and load_classifier().head[1].weight.abs().sum() > 0
