"""The model contract as a subclassable test class: one test per property, parametrised by sampler."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import fake_models

from trilemma.testing import ModelContract

FAKES = Path(__file__).parent


class TestTinyStepsContract(ModelContract):
    model_class = fake_models.TinySteps
    config = {"hidden": 8}
    expected_nfe = {"loop-1": 1, "loop-3": 3}


def test_a_broken_property_fails_its_own_test_and_the_others_run(tmp_path):
    (tmp_path / "test_broken.py").write_text(textwrap.dedent('''
        import torch
        import fake_models
        from trilemma.testing import ModelContract

        class Drifting(fake_models.TinySteps):
            name = "drifting"

            def loop(self, n, generator=None, *, steps: int, mix: float = 0.01):
                out = super().loop(n, generator, steps=steps, mix=mix)
                return out if steps == 1 else (out + torch.rand(()) * 0.1).clamp(0, 1)  # not reproducible

        class TestDrifting(ModelContract):
            model_class = Drifting
            expected_nfe = {"loop-1": 2}  # wrong on purpose: the model does 1
    '''))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(FAKES)})
    summary = result.stdout.strip().splitlines()[-1]
    assert "3 failed, 4 passed" in summary, result.stdout  # the checkpoint test sees the drift too
    assert "test_sampler[loop:steps=1]" in result.stdout and "NFE 1.0, expected 2" in result.stdout
    assert "test_sampler[loop:steps=3]" in result.stdout and "not deterministic" in result.stdout
