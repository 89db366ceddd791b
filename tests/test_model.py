from dataclasses import dataclass
from typing import Literal

import pytest
import torch

import trilemma
from trilemma.errors import BadSamples, TrilemmaError
from trilemma.nfe import NFECounter
from trilemma.testing import check_model_contract


@dataclass
class Cfg(trilemma.ModelConfig):
    steps: int = 10
    rate: float = 0.5
    flag: bool = False
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    schedule: Literal["linear", "cosine"] = "linear"
    limit: int | None = None


def test_config_coercion_and_rejection():
    cfg = Cfg.from_dict({"steps": "20", "rate": "1e-3", "flag": "true", "sizes": "100,50,10",
                         "schedule": "cosine", "limit": "none"})
    assert cfg == Cfg(steps=20, rate=1e-3, flag=True, sizes=(100, 50, 10), schedule="cosine", limit=None)
    assert Cfg.from_dict(cfg.to_dict()) == cfg
    assert Cfg.from_dict({"limit": "7"}).limit == 7
    for bad, match in (({"steps": "1.5"}, "expected int"), ({"flag": "maybe"}, "true/false"),
                       ({"schedule": "cubic"}, "not one of linear, cosine"), ({"extra": 1}, "unknown field")):
        with pytest.raises(TrilemmaError, match=match):
            Cfg.from_dict(bad)
    assert cfg.config_hash() != Cfg().config_hash()


def test_contract_passes_for_a_good_model():
    import fake_models

    check_model_contract(fake_models.Tiny)
    check_model_contract(fake_models.TinyThreeCalls, expected_nfe={"default": 3})
    check_model_contract(fake_models.Tiny, channels=3)


def test_contract_catches_bad_models():
    import fake_models

    with pytest.raises(BadSamples):
        check_model_contract(fake_models.TinyBadSamples)
    with pytest.raises(AssertionError, match="NFE 3"):
        check_model_contract(fake_models.TinyThreeCalls, expected_nfe={"default": 1})

    class Hidden(fake_models.Tiny):
        name = "hidden"

        def sampling_networks(self):
            return [torch.nn.Linear(1, 1)]  # not the network it samples with

    with pytest.raises(AssertionError, match="not a sub-module"):
        check_model_contract(Hidden)


def test_nfe_counter_weights_by_batch_size():
    net = torch.nn.Linear(3, 3)
    counter = NFECounter([net])
    with counter.counting():
        for _ in range(4):
            for chunk in torch.zeros(10, 3).chunk(3):  # 4 evaluations of 10 samples in chunks of 4, 4, 2
                net(chunk)
    net(torch.zeros(10, 3))  # outside the context: not counted
    assert counter.per_sample(10) == 4
