"""Checks for plugin authors: subclass ``ModelContract`` in a plugin's tests (one test per
property, parametrised by sampler), or call ``check_model_contract(ModelClass)`` for a quick check.

Installed as a pytest plugin (entry point ``pytest11``), so the ``model_contract`` fixture is
available in any test suite of an environment where trilemma is installed.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from trilemma.errors import TrilemmaError
from trilemma.model import GenerativeModel, ModelConfig
from trilemma.samplers import Sampler, SamplerSpec, bind, specs
from trilemma.sampling import draw
from trilemma.train import Budget, load_checkpoint, save_checkpoint, train


def _fake_data(n: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Blurry blobs as uint8 images: enough for a few training steps, no dataset needed."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, 28, 28, generator=g)
    images = torch.nn.functional.avg_pool2d(images, 5, stride=1, padding=2)
    return (images * 255).to(torch.uint8)


# --- the properties, one function each (the test class runs each as a test of its own) -------------

def check_config(model_class: type[GenerativeModel], config: Mapping[str, Any] | None = None) -> ModelConfig:
    """A name, a ModelConfig dataclass that round-trips and rejects unknown fields; the config built."""
    assert isinstance(model_class.name, str) and model_class.name, "model class needs a non-empty `name`"
    assert issubclass(model_class.Config, ModelConfig) and dataclasses.is_dataclass(model_class.Config), \
        "`Config` must be a ModelConfig dataclass"
    cfg = model_class.Config.from_dict(dict(config or {}))
    assert type(cfg).from_dict(cfg.to_dict()) == cfg, "config does not round-trip through to_dict/from_dict"
    with pytest.raises(TrilemmaError):
        type(cfg).from_dict({"no_such_field_xyz": 1})
    return cfg


def check_declarations(model_class: type[GenerativeModel]) -> None:
    """Presets and sampler specs that register (what ``trilemma list`` would refuse)."""
    problem = model_class.declaration_problem()
    assert problem is None, f"{model_class.name}: {problem}"


def check_networks(model: GenerativeModel) -> None:
    """``sampling_networks()`` names at least one network, each a sub-module of the model."""
    networks = model.sampling_networks()
    assert networks, "sampling_networks() must name at least one network"
    submodules = set(map(id, model.modules()))
    for net in networks:
        assert id(net) in submodules, f"sampling network {type(net).__name__} is not a sub-module of the model"


def check_training(model: GenerativeModel, *, steps: int, batch_size: int, checkpoint: Path | None = None) -> None:
    """A few training steps on fake data with finite losses, counted as the budget says."""
    data = _fake_data(4 * batch_size, model.channels)
    result = train(model, data, Budget(steps=steps, seconds=None, batch_size=batch_size), seed=0,
                   checkpoint=checkpoint, progress=False)
    assert result.steps == steps and result.images_seen == steps * batch_size
    assert result.losses, "training_step must return at least one loss"


def check_sampler(model: GenerativeModel, name: str, sampler: Sampler, expected_nfe: float | None = None) -> torch.Tensor:
    """Samples of the right shape and range through the harness's own path (validation, no-grad,
    NFE counted by hooks, > 0 or exactly ``expected_nfe``); the hook count agrees with the FLOPs and
    nothing is flagged (``trilemma.nfe``);
    same generator, same samples. Returns the samples."""
    drawn = draw(model, sampler, 5, batch_size=5, seed=1, where=f"sampler {name!r}")
    assert drawn.nfe_per_sample > 0, f"sampler {name!r} never called its sampling_networks()"
    if expected_nfe is not None:
        assert drawn.nfe_per_sample == expected_nfe, \
            f"sampler {name!r}: NFE {drawn.nfe_per_sample}, expected {expected_nfe}"
    check = drawn.counted
    assert check.agree and not check.flags, f"sampler {name!r}: {check.describe()}; list every network it " \
        "evaluates in sampling_networks(), call them as net(x) on the batch, and keep its parameters in torch"
    again = draw(model, sampler, 5, batch_size=5, seed=1, where=f"sampler {name!r}")
    assert torch.allclose(drawn.images, again.images), f"sampler {name!r} is not deterministic given its generator"
    return drawn.images


def check_checkpoint(model: GenerativeModel, chosen: Sequence[SamplerSpec], checkpoint: Path) -> None:
    """Save, load into a freshly built model: every sampler gives the same samples."""
    save_checkpoint(checkpoint, model, 0, 0.0, done=True)
    torch.manual_seed(123)
    clone = type(model)(model.config, channels=model.channels)
    clone.optimizers = clone.configure_optimizers()
    load_checkpoint(checkpoint, clone)
    originals = bind(model, chosen)
    for name, (_, sampler) in bind(clone, chosen).items():
        images = draw(clone, sampler, 5, batch_size=5, seed=1, where=f"sampler {name!r}").images
        first = draw(model, originals[name][1], 5, batch_size=5, seed=1, where=f"sampler {name!r}").images
        assert torch.allclose(images, first, atol=1e-5), f"sampler {name!r} differs after checkpoint load"


def _chosen(model_class: type[GenerativeModel], samplers: Sequence[str | SamplerSpec] | None) -> tuple[SamplerSpec, ...]:
    return specs(samplers) if samplers is not None else model_class.sampler_specs("smoke")


def check_model_contract(model_class: type[GenerativeModel], config: Mapping[str, Any] | None = None,
                         *, channels: int | None = None, steps: int = 3, batch_size: int = 8,
                         expected_nfe: Mapping[str, float] | None = None,
                         samplers: Sequence[str | SamplerSpec] | None = None) -> GenerativeModel:
    """Assert that ``model_class`` keeps the model contract, on the CPU, in seconds, stopping at
    the first broken property (``ModelContract`` runs each property as a test of its own).

    Checks: a name and a dataclass ``Config`` that round-trips and rejects unknown fields, presets
    and sampler specs that register; a few training steps with finite losses; every sampler of
    ``samplers`` (default: the smoke preset's, else the model's default specs) returns n×C×28×28
    finite floats in [0, 1] and calls its ``sampling_networks()`` (NFE > 0, or exactly
    ``expected_nfe[sampler]``), and the NFE its forward hooks count agrees with the NFE its FLOPs
    imply (no network work outside them); same seed, same samples; checkpoint save/load restores
    the samples. Returns the trained model for further checks.
    """
    cfg = check_config(model_class, config)
    check_declarations(model_class)
    torch.manual_seed(0)
    model = model_class(cfg, channels=channels or model_class.data_channels[0])
    check_networks(model)
    chosen = _chosen(model_class, samplers)
    with tempfile.TemporaryDirectory() as tmp:
        check_training(model, steps=steps, batch_size=batch_size, checkpoint=Path(tmp) / "model.pt")
        bound = bind(model, chosen)
        assert bound, "no sampler to check: give sampler specs"
        for name, (_, sampler) in bound.items():
            check_sampler(model, name, sampler, (expected_nfe or {}).get(name))
        check_checkpoint(model, chosen, Path(tmp) / "model.pt")
    return model


class ModelContract:
    """The model contract as a test class to subclass in a plugin's tests, one test per property,
    the sampler tests parametrised by sampler (as diffusers' ``ModelTesterMixin``)::

        class TestMyModel(ModelContract):
            model_class = MyModel
            config = {"hidden": 16}
            samplers = ("default",)          # default: the smoke preset's samplers
            expected_nfe = {"default": 1}

    The model is built and trained once per class; a broken property fails its own test and the
    others still run.
    """

    model_class: ClassVar[type[GenerativeModel]]
    config: ClassVar[Mapping[str, Any]] = {}
    samplers: ClassVar[Sequence[str | SamplerSpec] | None] = None
    expected_nfe: ClassVar[Mapping[str, float]] = {}
    channels: ClassVar[int | None] = None
    train_steps: ClassVar[int] = 3
    batch_size: ClassVar[int] = 8
    #: For a student (a model with a ``teacher``): builds the teacher its contract trains with (an
    #: untrained one will do; the contract checks the student, not what it learns).
    teacher: ClassVar[Callable[[], GenerativeModel] | None] = None

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "sampler_spec" in metafunc.fixturenames:
            chosen = _chosen(self.model_class, self.samplers)
            metafunc.parametrize("sampler_spec", chosen, ids=[str(spec) for spec in chosen])

    @pytest.fixture(scope="class")
    @classmethod
    def trained(cls, tmp_path_factory: pytest.TempPathFactory) -> GenerativeModel:
        torch.manual_seed(0)
        model = cls.model_class(cls.model_class.Config.from_dict(dict(cls.config)),
                                channels=cls.channels or cls.model_class.data_channels[0])
        if cls.teacher is not None:
            model.attach_teacher(cls.teacher())
        check_training(model, steps=cls.train_steps, batch_size=cls.batch_size,
                       checkpoint=tmp_path_factory.mktemp("contract") / "model.pt")
        return model

    def test_config_round_trips_and_rejects_unknown_fields(self) -> None:
        check_config(self.model_class, self.config)

    def test_declarations_register(self) -> None:
        check_declarations(self.model_class)

    def test_sampling_networks_are_submodules(self) -> None:
        check_networks(self.model_class(self.model_class.Config.from_dict(dict(self.config)),
                                        channels=self.channels or self.model_class.data_channels[0]))

    def test_training_steps_have_finite_losses(self, trained: GenerativeModel) -> None:
        assert trained.optimizers, "configure_optimizers() made no optimizer"

    def test_sampler(self, trained: GenerativeModel, sampler_spec: SamplerSpec) -> None:
        ((name, (_, sampler)),) = bind(trained, [sampler_spec]).items()
        check_sampler(trained, name, sampler, self.expected_nfe.get(name))

    def test_checkpoint_restores_every_sampler(self, trained: GenerativeModel, tmp_path: Path) -> None:
        check_checkpoint(trained, _chosen(self.model_class, self.samplers), tmp_path / "model.pt")


@pytest.fixture
def model_contract():
    """The ``check_model_contract`` function, as a fixture."""
    return check_model_contract
