"""The pinned networks as torch-fidelity feature extractors; imported only when a metric is
computed (torch-fidelity imports torchvision's models, about 1.5 s)."""

from __future__ import annotations

from typing import Any

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase


class _PinnedExtractor(FeatureExtractorBase):
    """A pinned network on uint8 N×1×H×W input: ``features`` (and ``logits`` where it has them)."""

    provided: tuple[str, ...] = ("features",)

    @classmethod
    def get_provided_features_list(cls) -> tuple[str, ...]:
        return cls.provided

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        found = self.outputs(x.float() / 255)
        return tuple(found[name] for name in self.features_list)


class MnistClassifierExtractor(_PinnedExtractor):
    """The pinned MNIST classifier: 128-d penultimate features and 10 logits."""

    provided = ("features", "logits")

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        from trilemma.classifier import load_classifier

        super().__init__(name, features_list)
        self.classifier = load_classifier("cpu")

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = self.classifier.features_and_logits(x)
        return {"features": features, "logits": logits}


class MnistAutoencoderExtractor(_PinnedExtractor):
    """The pinned MNIST autoencoder's 64-d code."""

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        from trilemma.autoencoder import load_autoencoder

        super().__init__(name, features_list)
        self.autoencoder = load_autoencoder("cpu")

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.autoencoder.encode(x)}


EXTRACTORS = {"mnist-classifier": MnistClassifierExtractor, "mnist-autoencoder": MnistAutoencoderExtractor}
