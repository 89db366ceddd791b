"""The pinned MNIST classifier as a torch-fidelity feature extractor; imported only when a metric
is computed (torch-fidelity imports torchvision's models, about 1.5 s)."""

from __future__ import annotations

from typing import Any

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from trilemma.classifier import load_classifier


class MnistClassifierExtractor(FeatureExtractorBase):
    """The pinned MNIST classifier as a torch-fidelity feature extractor (uint8 N×1×H×W in)."""

    def __init__(self, name: str, features_list: list[str], **kwargs: Any) -> None:
        super().__init__(name, features_list)
        self.classifier = load_classifier("cpu")

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, logits = self.classifier.features_and_logits(x.float() / 255)
        found = {"features": features, "logits": logits}
        return tuple(found[name] for name in self.features_list)
