"""Checks for plugin authors: ``check_model_contract(ModelClass)`` in a plugin's tests.

Installed as a pytest plugin (entry point ``pytest11``), so the ``model_contract`` fixture is
available in any test suite of an environment where trilemma is installed.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from trilemma.errors import TrilemmaError
from trilemma.model import GenerativeModel, ModelConfig
from trilemma.nfe import check_nfe
from trilemma.samplers import SamplerSpec, bind, specs
from trilemma.sampling import draw
from trilemma.train import Budget, load_checkpoint, save_checkpoint, train


def _fake_data(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Blurry blobs as uint8 images: enough for a few training steps, no dataset needed."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, 28, 28, generator=g)
    images = torch.nn.functional.avg_pool2d(images, 5, stride=1, padding=2)
    return (images * 255).to(torch.uint8)


def check_model_contract(model_class: type[GenerativeModel], config: Mapping[str, Any] | None = None,
                         *, channels: int | None = None, steps: int = 3, batch_size: int = 8,
                         expected_nfe: Mapping[str, float] | None = None,
                         samplers: Sequence[str | SamplerSpec] | None = None) -> GenerativeModel:
    """Assert that ``model_class`` keeps the model contract, on the CPU, in seconds.

    Checks: a name and a dataclass ``Config`` that round-trips and rejects unknown fields, presets
    and sampler specs that register; a few training steps with finite losses; every sampler of
    ``samplers`` (default: the smoke preset's, else the model's default specs) returns n×C×28×28 finite floats in [0, 1]
    and calls its ``sampling_networks()`` (NFE > 0, or exactly ``expected_nfe[sampler]``), and the
    NFE its forward hooks count agrees with the NFE its FLOPs imply (no network work outside them);
    same seed, same samples; checkpoint save/load restores the samples.
    Returns the trained model for further checks.
    """
    assert isinstance(model_class.name, str) and model_class.name, "model class needs a non-empty `name`"
    assert issubclass(model_class.Config, ModelConfig) and dataclasses.is_dataclass(model_class.Config), \
        "`Config` must be a ModelConfig dataclass"
    cfg = model_class.Config.from_dict(dict(config or {}))
    assert type(cfg).from_dict(cfg.to_dict()) == cfg, "config does not round-trip through to_dict/from_dict"
    with pytest.raises(TrilemmaError):
        type(cfg).from_dict({"no_such_field_xyz": 1})
    problem = model_class.declaration_problem()
    assert problem is None, f"{model_class.name}: {problem}"
    chosen = specs(samplers) if samplers is not None else model_class.sampler_specs("smoke")

    channels = channels or model_class.data_channels[0]
    torch.manual_seed(0)
    model = model_class(cfg, channels=channels)
    networks = model.sampling_networks()
    assert networks, "sampling_networks() must name at least one network"
    submodules = set(map(id, model.modules()))
    for net in networks:
        assert id(net) in submodules, f"sampling network {type(net).__name__} is not a sub-module of the model"

    data = _fake_data(4 * batch_size, channels)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        result = train(model, data, Budget(steps=steps, seconds=None, batch_size=batch_size), seed=0,
                       checkpoint=ckpt, progress=False)
        assert result.steps == steps and result.images_seen == steps * batch_size
        assert result.losses, "training_step must return at least one loss"

        bound = {name: sampler for name, (_, sampler) in bind(model, chosen).items()}
        assert bound, "no sampler to check: give sampler specs"
        first = {}
        for name, sampler in bound.items():
            # The harness's own sampling path: validation, no-grad, NFE counted by hooks.
            drawn = draw(model, sampler, 5, batch_size=5, seed=1, where=f"sampler {name!r}")
            assert drawn.nfe_per_sample > 0, f"sampler {name!r} never called its sampling_networks()"
            if expected_nfe and name in expected_nfe:
                assert drawn.nfe_per_sample == expected_nfe[name], \
                    f"sampler {name!r}: NFE {drawn.nfe_per_sample}, expected {expected_nfe[name]}"
            check = check_nfe(model.sampling_networks(), sampler, 4, torch.Generator().manual_seed(2))
            assert check.agree, f"sampler {name!r}: {check.describe()}; list every network it evaluates in " \
                "sampling_networks() and call them as net(x)"
            again = draw(model, sampler, 5, batch_size=5, seed=1, where=f"sampler {name!r}")
            assert torch.allclose(drawn.images, again.images), \
                f"sampler {name!r} is not deterministic given its generator"
            first[name] = drawn.images

        save_checkpoint(ckpt, model, steps, 0.0, done=True)
        torch.manual_seed(123)
        clone = model_class(cfg, channels=channels)
        clone.optimizers = clone.configure_optimizers()
        load_checkpoint(ckpt, clone)
        for name, (_, sampler) in bind(clone, chosen).items():
            images = draw(clone, sampler, 5, batch_size=5, seed=1, where=f"sampler {name!r}").images
            assert torch.allclose(images, first[name], atol=1e-5), f"sampler {name!r} differs after checkpoint load"
    return model


@pytest.fixture
def model_contract():
    """The ``check_model_contract`` function, as a fixture."""
    return check_model_contract
