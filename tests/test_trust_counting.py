"""Trust, counting: a plugin that knows how the harness counts still gets its true NFE, costs and speed.

Each model below is a stranger's sampler (or training step) written against the harness's way of
counting, one per class of cheat in issue 22. Its true work is eight passes of a 784→256→784 MLP
per sample (``honest`` does exactly that), one update per training step, a 403k-parameter sampler.
"""

import textwrap

import numpy as np
import pandas as pd
import pytest
from helpers import cli_env, trilemma_cli, write_installed_plugin

CHEATS = textwrap.dedent('''
    from dataclasses import dataclass
    import numpy as np
    import torch
    from torch import nn
    import trilemma

    PASSES = 8


    def mlp():
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 784))


    def counted():  # the harness's FLOP counter is a dispatch mode
        return torch._C._len_torch_dispatch_stack() > 0


    def hooked(net):
        return bool(net._forward_pre_hooks or net._forward_hooks)


    @dataclass
    class Config(trilemma.ModelConfig):
        hidden: int = 256


    class Base(trilemma.GenerativeModel):
        Config = Config

        def __init__(self, config=None, channels=1):
            super().__init__(config, channels)
            self.net = mlp()
            self.shadow = mlp()  # the same network, not listed

        def configure_optimizers(self):
            return {"sgd": torch.optim.SGD(self.parameters(), lr=1e-3)}

        def update(self, batch):
            x = batch.flatten(1)
            loss = (self.net(x) - x).pow(2).mean()
            self.optimizers["sgd"].zero_grad()
            loss.backward()
            self.optimizers["sgd"].step()
            return loss

        def training_step(self, batch, step):
            return {"loss": self.update(batch)}

        def sampling_networks(self):
            return [self.net]

        def noise(self, n, generator):
            return torch.randn(n, 784, generator=generator)

        def finish(self, x, n):
            return torch.sigmoid(x).reshape(n, 1, 28, 28)

        def honest(self, n, generator):
            x = self.noise(n, generator)
            for _ in range(PASSES):
                x = self.net(x)
            return self.finish(x, n)

        def one_hooked_then_shadow(self, n, generator):
            x = self.net(self.noise(n, generator))
            for _ in range(PASSES - 1):
                x = self.shadow(x)
            return self.finish(x, n)


    class Honest(Base):
        name = "honest"

        def sample(self, n, generator=None):
            return self.honest(n, generator)


    class SmallBatch(Base):  # 1: honest on a probe-sized batch only
        name = "small-batch"

        def sample(self, n, generator=None):
            return self.honest(n, generator) if n <= 4 else self.one_hooked_then_shadow(n, generator)


    class FirstCall(Base):  # 1: honest on its first call only
        name = "first-call"
        calls = 0

        def sample(self, n, generator=None):
            self.calls += 1
            return self.honest(n, generator) if self.calls == 1 else self.one_hooked_then_shadow(n, generator)


    class ModeAware(Base):  # 1: honest only while a dispatch mode (the FLOP counter) is active
        name = "mode-aware"

        def sample(self, n, generator=None):
            return self.honest(n, generator) if counted() else self.one_hooked_then_shadow(n, generator)


    class Bank(Base):  # 1: the first call draws a bank; later calls return bank images after one pass
        name = "bank"
        bank = None

        def sample(self, n, generator=None):
            if self.bank is None:
                self.bank = self.honest(1024, generator)
                self.used = 0
            self.net(self.noise(n, generator))
            images = self.bank[self.used:self.used + n]
            self.used = (self.used + n) % (1024 - n)
            return images


    class Outer(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            for _ in range(PASSES):
                x = self.inner(x)
            return x


    class Nested(Base):  # 2: a listed network calling another listed network eight times
        name = "nested"

        def __init__(self, config=None, channels=1):
            super().__init__(config, channels)
            self.outer = Outer(self.net)

        def sampling_networks(self):
            return [self.outer, self.net]

        def sample(self, n, generator=None):
            return self.finish(self.outer(self.noise(n, generator)), n)


    class Unsqueezed(Base):  # 2: the batch hidden behind a leading dimension of 1
        name = "unsqueezed"

        def sample(self, n, generator=None):
            x = self.noise(n, generator)[None]
            for _ in range(PASSES):
                x = self.net(x)
            return self.finish(x[0], n)


    class MatVec(Base):  # 3: seven passes as per-sample matrix-vector products
        name = "matvec"

        def sample(self, n, generator=None):
            x = self.net(self.noise(n, generator))
            first, last = self.shadow[0], self.shadow[2]
            rows = []
            for row in x:
                for _ in range(PASSES - 1):
                    row = torch.addmv(last.bias, last.weight, torch.relu(torch.mv(first.weight, row) + first.bias))
                rows.append(row)
            return self.finish(torch.stack(rows), n)


    class Numpy(Base):  # 3: seven passes in numpy on the listed network's own weights
        name = "numpy"

        def sample(self, n, generator=None):
            x = self.net(self.noise(n, generator)).numpy()
            w1, b1 = self.net[0].weight.detach().numpy(), self.net[0].bias.detach().numpy()
            w2, b2 = self.net[2].weight.detach().numpy(), self.net[2].bias.detach().numpy()
            for _ in range(PASSES - 1):
                x = np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
            return self.finish(torch.from_numpy(x), n)


    class Duplicates(Base):  # 4: n/4 distinct images, each returned four times
        name = "duplicates"

        def sample(self, n, generator=None):
            distinct = self.honest(-(-n // 4), generator)
            return distinct.repeat_interleave(4, dim=0)[:n]


    class FastUnhooked(Base):  # 5: the timed calls run without hooks: return a slice of a buffer
        name = "fast-unhooked"
        buffer = None

        def sample(self, n, generator=None):
            if hooked(self.net) or self.buffer is None:
                images = self.honest(n, generator)
                self.buffer = images if self.buffer is None or len(images) > len(self.buffer) else self.buffer
                return images
            return self.buffer[:n]


    class FastUncounted(Base):  # 5: outside the FLOP counter, one hooked pass on one sample
        name = "fast-uncounted"
        buffer = None

        def sample(self, n, generator=None):
            if counted() or self.buffer is None or len(self.buffer) < n:
                images = self.honest(n, generator)
                self.buffer = images
                return images
            self.net(self.noise(1, generator))
            return self.buffer[:n]


    class Skipping(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 784))

        def forward(self, x):
            return self.body(x) if counted() else x


    class FastForward(Base):  # 5: a listed network that computes only while FLOPs are counted
        name = "fast-forward"

        def __init__(self, config=None, channels=1):
            super().__init__(config, channels)
            self.net = Skipping()

        def sample(self, n, generator=None):
            return self.honest(n, generator)


    class LateUpdates(Base):  # 6: one update per step while a replay of the first steps would look, then eight
        name = "late-updates"

        def training_step(self, batch, step):
            for _ in range(1 if step < 4 else PASSES):
                loss = self.update(batch)
            return {"loss": loss}

        def sample(self, n, generator=None):
            return self.honest(n, generator)


    class Decoy(Base):  # 6: a two-parameter decoy while the model is in train mode (when parameters are counted)
        name = "decoy"

        def __init__(self, config=None, channels=1):
            super().__init__(config, channels)
            self.decoy = nn.Linear(1, 1)

        def sampling_networks(self):
            return [self.decoy] if self.training else [self.net]

        def sample(self, n, generator=None):
            return self.honest(n, generator)


    MODELS = (Honest, SmallBatch, FirstCall, ModeAware, Bank, Nested, Unsqueezed, MatVec, Numpy, Duplicates,
              FastUnhooked, FastUncounted, FastForward, LateUpdates, Decoy)


    @trilemma.hookimpl
    def register_models(register):
        for cls in MODELS:
            register(cls)
''')

NAMES = ("honest", "small-batch", "first-call", "mode-aware", "bank", "nested", "unsqueezed", "matvec", "numpy",
         "duplicates", "fast-unhooked", "fast-uncounted", "fast-forward", "late-updates", "decoy")
STEPS = 12  # late-updates does one update a step for four steps, then eight


@pytest.fixture(scope="module")
def cheats(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cheats")
    site, out = tmp / "site", tmp / "run"
    write_installed_plugin(site, "trilemma-cheats", "cheats", "trilemma_cheats", CHEATS)
    env = cli_env(site, allow="cheats")
    # --jobs 1: one process builds the metrics' caches once (parallel cells: test_parallel.py)
    ran = trilemma_cli("run", *NAMES, "--preset", "smoke", "--steps", str(STEPS), "--out", str(out), "--no-progress",
                       "--jobs", "1", env=env)
    assert (out / "results.csv").exists(), ran.stdout + ran.stderr
    rows = pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""]).set_index("model")
    return ran, rows, (out / "report.md").read_text()


def flags(row) -> str:
    value = row.get("count_flags")
    return value if isinstance(value, str) else ""


def test_the_honest_sampler_is_counted_as_before(cheats):
    _, rows, _ = cheats
    row = rows.loc["honest"]
    assert row["status"] == "ok" and row["nfe"] == 8 and row["nfe_check"] == "agree" and flags(row) == ""


@pytest.mark.parametrize("model", ["small-batch", "first-call", "mode-aware", "bank"])
def test_1_the_scored_draw_is_the_counted_draw(cheats, model):
    _, rows, _ = cheats
    row = rows.loc[model]
    assert row["nfe"] >= 7.9, (model, row["nfe"], row["nfe_check"])


@pytest.mark.parametrize("model", ["nested", "unsqueezed"])
def test_2_work_inside_a_counted_call_is_counted(cheats, model):
    _, rows, _ = cheats
    assert rows.loc[model, "nfe"] >= 7.9, (model, rows.loc[model, "nfe"])
    assert rows.loc["nested", "nfe_check"] == "agree"  # an honest nesting of listed networks is not a mismatch


def test_3_matrix_vector_products_are_flops(cheats):
    _, rows, _ = cheats
    assert rows.loc["matvec", "nfe"] >= 7.9 and rows.loc["matvec", "nfe_check"] == "mismatch"


def test_3_weights_leaving_torch_flag_the_row(cheats):
    _, rows, report = cheats
    assert "weights-left-torch" in flags(rows.loc["numpy"])
    assert "⚠ numpy/default" in report


def test_4_duplicated_samples_are_flagged_and_cost_per_distinct_sample(cheats):
    _, rows, _ = cheats
    row = rows.loc["duplicates"]
    assert "duplicates" in flags(row) and row["distinct_share"] == pytest.approx(0.25, abs=0.01)
    assert row["nfe"] >= 7.9
    assert rows.loc["honest", "distinct_share"] == 1


def test_5_the_timed_calls_are_the_counted_work(cheats):
    _, rows, _ = cheats
    honest = rows.loc["honest", "ms_per_sample"]
    assert rows.loc["fast-unhooked", "ms_per_sample"] >= honest / 5
    assert "timing-differs" in flags(rows.loc["fast-uncounted"])
    for model in NAMES:
        row = rows.loc[model]
        if row["status"] == "ok" and "faster-than-peak" not in flags(row):
            assert row["sample_gflop"] * row["samples_per_s"] <= row["peak_gflops"] * 2, model


def test_5_a_speed_beyond_the_device_peak_is_flagged(cheats):
    _, rows, report = cheats
    assert "faster-than-peak" in flags(rows.loc["fast-forward"])
    assert "⚠ fast-forward/default" in report


def test_6_training_flops_come_from_the_real_steps(cheats):
    _, rows, _ = cheats
    truth = (4 * 1 + (STEPS - 4) * 8) / STEPS
    ratio = rows.loc["late-updates", "train_gflop_per_step"] / rows.loc["honest", "train_gflop_per_step"]
    assert ratio == pytest.approx(truth, rel=0.05)


def test_6_sampling_params_are_those_the_draw_used(cheats):
    _, rows, _ = cheats
    assert rows.loc["decoy", "sampling_params"] == rows.loc["honest", "sampling_params"] == 2 * (784 * 256) + 256 + 784
    assert np.isfinite(rows.loc["decoy", "nfe"])


def test_the_parameter_watch_tells_use_from_a_look_and_sees_weights_leave_torch():
    import torch
    from torch import nn

    from trilemma.watch import ParameterWatch

    net, idle = nn.Linear(3, 2), nn.Linear(3, 2)
    holder = nn.ModuleList([net, idle])
    with ParameterWatch([holder]) as watch:
        net(torch.zeros(1, 3))
        looked = (idle.weight.device, idle.weight.shape, idle.bias.dtype)  # looking is not using
    assert watch.used_parameters == 3 * 2 + 2 and not watch.left and looked[1] == (2, 3)
    for leave in (lambda w: w.detach().numpy(), lambda w: w.data.tolist(), lambda w: np.asarray(w.detach().clone())):
        with ParameterWatch([holder]) as watch:
            leave(idle.weight)
        assert watch.left == {"1.weight"}
    square = nn.Linear(3, 3)
    with ParameterWatch([square]) as watch:
        square(torch.zeros(3, 3)).detach().numpy()  # an output as large as the weight is still not the weight
        torch.nn.functional.linear(torch.zeros(1, 3), square.weight.detach())  # a detached copy is used
    assert not watch.left and watch.used_parameters == 3 * 3 + 3


def test_training_flops_are_counted_on_steps_spread_over_the_run():
    from trilemma.train import FLOP_COUNTED_STEPS, counted_steps

    assert counted_steps(5, seed=0) == frozenset(range(5))
    chosen = sorted(counted_steps(1600, seed=3))
    assert len(chosen) == FLOP_COUNTED_STEPS and chosen == sorted(counted_steps(1600, seed=3))
    assert [step // 100 for step in chosen] == list(range(16))  # one in each sixteenth
    assert chosen != sorted(counted_steps(1600, seed=4))


def test_the_report_says_how_rows_were_counted_and_what_each_likelihood_kind_is():
    from trilemma.metrics.likelihood import LikelihoodMetric
    from trilemma.metrics.speed import COUNTING, PROBED, SpeedMetric

    old = pd.DataFrame({"model": ["m"], "sampler": ["s"], "nfe": [1.0], "nfe_hooks": [1.0], "nfe_flops": [1.0],
                        "sample_gflop": [0.1], "nfe_check": ["agree"]})
    new = old.assign(nfe_batch1=[1.0], count_flags=["duplicates"])
    assert PROBED in " ".join(SpeedMetric().report_section(old).notes)
    notes = " ".join(SpeedMetric().report_section(new).notes)
    assert COUNTING in notes and "⚠ m/s: duplicates" in notes
    flows = pd.DataFrame({"model": ["glow", "vae"], "bpd": [2.9, 5.3], "bpd_kind": ["dequantized", "elbo"]})
    section = LikelihoodMetric().report_section(flows)
    assert list(section.table["kind"]) == ["dequantized", "elbo"]
    assert any("uniform-dequantization bound" in note for note in section.notes)
