"""A stranger's plugin: its own distribution with an entry point, no change to the core."""

import subprocess
import sys
import textwrap

import pandas as pd
from helpers import cli_env, trilemma_cli

PYPROJECT = textwrap.dedent('''
    [build-system]
    requires = ["setuptools>=69"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "trilemma-mymodel"
    version = "0.3.0"
    dependencies = ["trilemma"]

    [project.entry-points.trilemma]
    mymodel = "trilemma_mymodel"

    [tool.setuptools]
    py-modules = ["trilemma_mymodel"]
''')

MODULE = textwrap.dedent('''
    from dataclasses import dataclass
    import torch
    from torch import nn
    import trilemma


    @dataclass
    class Config(trilemma.ModelConfig):
        latent: int = 8


    class MyModel(trilemma.GenerativeModel):
        name = "mymodel"
        Config = Config

        def __init__(self, config=None, channels=1):
            super().__init__(config, channels)
            self.generator = nn.Sequential(nn.Linear(self.config.latent, 784), nn.Sigmoid())

        def configure_optimizers(self):
            return {"sgd": torch.optim.SGD(self.parameters(), lr=0.1)}

        def training_step(self, batch, step):
            fake = self.generator(torch.randn(len(batch), self.config.latent))
            loss = (fake.mean(0) - batch.flatten(1).mean(0)).pow(2).mean()
            self.optimizers["sgd"].zero_grad()
            loss.backward()
            self.optimizers["sgd"].step()
            return {"loss": loss}

        def sample(self, n, generator=None):
            z = torch.randn(n, self.config.latent, generator=generator, device=self.device)
            return self.generator(z).view(n, 1, 28, 28)

        def sampling_networks(self):
            return [self.generator]


    @trilemma.hookimpl
    def register_models(register):
        register(MyModel)
''')


def test_third_party_distribution_is_found_trained_and_sampled(tmp_path):
    project, site = tmp_path / "trilemma-mymodel", tmp_path / "site"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "trilemma_mymodel.py").write_text(MODULE)
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                              "--target", str(site), str(project)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = cli_env(site)
    listed = trilemma_cli("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert any(line.split()[:3] == ["mymodel", "trilemma-mymodel", "0.3.0"] for line in listed.stdout.splitlines())

    out = tmp_path / "run"
    ran = trilemma_cli("run", "mymodel", "--preset", "smoke", "--out", str(out), "--no-progress", env=env)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["model"] == "mymodel" and row["status"] == "ok" and row["nfe"] == 1
    assert row["train_steps"] == 3 and row["fid"] > 0
