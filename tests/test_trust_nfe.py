"""Trust, NFE: a stranger's sampler cannot get an ok row with an under-counted NFE."""

import textwrap
import warnings

import pandas as pd
import pytest
import torch
from helpers import cli_env, trilemma_cli, write_installed_plugin
from torch import nn

from trilemma.nfe import DrawCounter, NFECounter, batch_items

# Each model evaluates its 784→784 network three times per sample, in a different way.
SNEAKY = textwrap.dedent('''
    from dataclasses import dataclass
    import torch
    from torch import nn
    import trilemma


    @dataclass
    class Config(trilemma.ModelConfig):
        hidden: int = 8


    class Base(trilemma.GenerativeModel):
        Config = Config

        def __init__(self, config=None, channels=1):
            super().__init__(config, channels)
            self.net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 784))
            self.head = nn.Linear(784, 784)

        def configure_optimizers(self):
            return {"sgd": torch.optim.SGD(self.parameters(), lr=1e-3)}

        def training_step(self, batch, step):
            loss = (self.net(batch.flatten(1)) - batch.flatten(1)).pow(2).mean()
            self.optimizers["sgd"].zero_grad()
            loss.backward()
            self.optimizers["sgd"].step()
            return {"loss": loss}

        def sampling_networks(self):
            return [self.net]

        def finish(self, x, n):
            return torch.sigmoid(x).view(n, 1, 28, 28)


    class Undeclared(Base):  # one declared call, then the real work in a network it does not list
        name = "undeclared"

        def sample(self, n, generator=None):
            x = self.net(torch.randn(n, 784, generator=generator))
            for _ in range(3):
                x = self.head(x)
            return self.finish(x, n)


    class DirectForward(Base):  # net.forward(x): no hook fires
        name = "direct-forward"

        def sample(self, n, generator=None):
            x = torch.randn(n, 784, generator=generator)
            for _ in range(3):
                x = self.net.forward(x)
            return self.finish(x, n)


    class Layerwise(Base):  # the layers one by one: no hook on the network fires
        name = "layerwise"

        def sample(self, n, generator=None):
            x = torch.randn(n, 784, generator=generator)
            for _ in range(3):
                for layer in self.net:
                    x = layer(x)
            return self.finish(x, n)


    class TimeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 784))

        def forward(self, t, x):
            return self.net(x) * (1 + 0 * t.float().sum())


    class TimeFirst(Base):  # net(t, x) with t of shape (1,) or 0-d before the batch
        name = "time-first"

        def __init__(self, config=None, channels=1):
            super().__init__(config, channels)
            self.timed = TimeNet()

        def sample(self, n, generator=None):
            x = torch.randn(n, 784, generator=generator)
            x = self.timed(torch.zeros(1), x)
            x = self.timed(torch.tensor(0.5), x)
            x = self.timed(t=torch.ones(1), x=x)
            return self.finish(x, n)

        def sampling_networks(self):
            return [self.timed]


    class Traced(Base):  # a torch.jit.trace wrapper made at sample time: no hook fires in its calls
        name = "traced"

        def sample(self, n, generator=None):
            x = torch.randn(n, 784, generator=generator)
            traced = torch.jit.trace(self.net, x, check_trace=False)
            for _ in range(3):
                x = traced(x)
            return self.finish(x, n)


    @trilemma.hookimpl
    def register_models(register):
        for cls in (Undeclared, DirectForward, Layerwise, TimeFirst, Traced):
            register(cls)
''')


@pytest.fixture(scope="module")
def sneaky_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sneaky")
    site, out = tmp / "site", tmp / "run"
    write_installed_plugin(site, "trilemma-sneaky", "sneaky", "trilemma_sneaky", SNEAKY)
    env = cli_env(site, allow="sneaky")
    ran = trilemma_cli("run", "undeclared", "direct-forward", "layerwise", "time-first", "traced", "--preset", "smoke",
                       "--out", str(out), "--no-progress", "--jobs", "1", env=env)
    listed = trilemma_cli("list", "--check", env=env)
    return ran, pd.read_csv(out / "results.csv").set_index("model"), (out / "report.md").read_text(), listed


def test_a_network_the_sampler_does_not_list_is_caught_and_the_nfe_not_under_counted(sneaky_run):
    _, rows, report, _ = sneaky_run
    row = rows.loc["undeclared"]
    assert row["nfe_check"] == "mismatch" and row["nfe_hooks"] == 1
    assert row["nfe"] >= 3.9  # one 784→64→784 pass plus three 784×784 passes: FLOPs say about 4 net passes
    assert "⚠ undeclared/default" in report and "NFE cross-check" in report


@pytest.mark.parametrize("model", ["direct-forward", "layerwise"])
def test_network_work_with_no_hook_call_is_never_an_ok_row(sneaky_run, model):
    ran, rows, _, _ = sneaky_run
    assert rows.loc[model, "status"] == "failed"
    assert "NFE counted 0" in rows.loc[model, "error"] and "GFLOP per sample" in rows.loc[model, "error"]
    assert ran.returncode == 1


def test_a_timestep_before_the_batch_does_not_shrink_the_count(sneaky_run):
    _, rows, _, _ = sneaky_run
    row = rows.loc["time-first"]
    assert row["status"] == "ok" and row["nfe"] == 3 and row["nfe_check"] == "agree"


def test_a_traced_wrapper_is_flagged(sneaky_run):
    _, rows, _, _ = sneaky_run
    row = rows.loc["traced"]
    assert row["nfe_check"] == "mismatch" or row["status"] == "failed"
    if row["status"] == "ok":
        assert row["nfe"] >= 3


def test_list_shows_both_counts_for_every_sampler(sneaky_run):
    *_, listed = sneaky_run
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines() if line.startswith("      ")}
    assert "agree" in lines["default"] or "mismatch" in lines["default"]
    assert "NFE 3 / 3" in listed.stdout  # time-first
    assert listed.stdout.count("mismatch") >= 4


class Holder(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def sampling_networks(self):
        return [self.net]


def count_draw(net, sampler, sizes=(4, 1)):
    """A draw counted as the harness counts one: batches of ``sizes``."""
    counter = DrawCounter(Holder(net))
    with torch.no_grad(), counter.counting():
        for size in sizes:
            counter.call(sampler, size, None)
    return counter.result()


def test_counting_sees_through_compile_trace_and_direct_calls():
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16))

    def run(call):
        def sampler(n, generator):
            x = torch.randn(n, 16, generator=generator)
            for _ in range(3):
                x = call(x)
            return x
        return count_draw(net, sampler)

    assert run(net).agree and run(net).hook_nfe == 3
    assert not run(net.forward).agree and run(net.forward).hook_nfe == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(net)
        check = run(compiled)
    assert check.agree and check.hook_nfe == 3 and check.flop_nfe == pytest.approx(3)


def test_the_innermost_listed_calls_are_the_evaluations_and_the_batch_is_the_largest_leading_dim():
    outer = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    counter = NFECounter([outer, outer[0]])
    with counter.counting():
        outer(torch.zeros(5, 4))  # one evaluation: the listed wrapper calls its listed first layer once
    assert counter.calls == 1 and counter.items == 5
    repeat = nn.Linear(4, 4)

    class Loop(nn.Module):
        def forward(self, x):
            for _ in range(3):
                x = repeat(x)
            return x

    counter = NFECounter([Loop(), repeat])
    with counter.counting():
        counter.networks[0](torch.zeros(5, 4))
    assert counter.calls == 3 and counter.items == 15
    assert batch_items((torch.zeros(1), torch.zeros(7, 3)), {}) == 7
    assert batch_items((torch.tensor(2.0),), {"x": torch.zeros(6, 2)}) == 6
    assert batch_items(([torch.zeros(9, 2), torch.zeros(9, 4)],), {}) == 9  # a list of latents


def test_throughput_is_timed_on_the_scored_draws_full_batches_after_the_first():
    import fake_models

    from trilemma.nfe import draw_batches
    from trilemma.sampling import draw

    torch.manual_seed(0)
    model = fake_models.Tiny(fake_models.Tiny.Config(hidden=8))
    samples = draw(model, lambda n, g: model.sample(n, g), 41, batch_size=16, seed=0)
    assert [n for n, _ in samples.batch_seconds] == draw_batches(41, 16) == [16, 16, 8, 1]
    assert all(seconds > 0 for _, seconds in samples.batch_seconds)
    size, timed, seconds = samples.timed_batches()
    # the second full batch only: the first is the warm-up, the short one and the lone sample are not full
    assert (size, timed, seconds) == (16, 16, samples.batch_seconds[1][1])
    assert samples.head(5).images.shape[0] == 5 and samples.head(5).nfe_check is samples.nfe_check
