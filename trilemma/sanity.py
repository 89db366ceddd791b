"""The metric sanity suite: sample sets whose order a person knows, scored by every installed metric.

Real test digits (held out from the reference the metrics compare with); the same with Gaussian
noise and with blur at growing strength, all still legible (each metric must be monotone in the
degradation); half the classes; one class; smooth blobs (thresholded low-frequency noise); pixel
noise; all black; training copies. ``check`` lists every
pair a column with a better direction puts in the wrong order, in its declared direction and as its
``Column.judged`` says: each degradation worse than real and monotone, digits of any of these
qualities above blobs, noise and black, and for coverage columns fewer classes worse. Metrics that
need a model (speed, likelihood) score nothing here: a sample set has no sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trilemma.columns import Column
from trilemma.data import Split

NOISE = (0.05, 0.1, 0.2)  # σ of the Gaussian noise added to [0, 1] images: digits stay legible to a person
BLUR = (0.5, 1.0, 1.5)  # σ in pixels of the Gaussian blur: likewise
NOT_DIGITS = ("blobs", "pixel-noise", "black")


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))


def _blobs(n: int, generator: torch.Generator) -> torch.Tensor:
    """White blobs on black: 7×7 noise upsampled smoothly, thresholded at its 80th percentile, softened."""
    low = torch.rand(n, 1, 7, 7, generator=generator)
    smooth = F.interpolate(low, size=(28, 28), mode="bicubic", align_corners=False)
    cut = smooth.flatten(1).quantile(0.8, dim=1).view(-1, 1, 1, 1)
    return _blur((smooth > cut).float(), 1.0).clamp(0, 1)


def sample_sets(data: Mapping[str, Split], n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The named sets, each n images N×1×28×28 in [0, 1]; degradations of the same real digits."""
    generator = torch.Generator().manual_seed(seed)
    test, train = data["test"], data["train"]
    pick = torch.randperm(len(test.images), generator=generator)
    real = test.images[pick[:n]].float() / 255
    labels = test.labels[pick]

    def of_classes(classes: tuple[int, ...]) -> torch.Tensor:
        chosen = pick[torch.isin(labels, torch.tensor(classes))][:n]
        return test.images[chosen].float() / 255

    sets = {"real": real}
    for sigma in NOISE:
        sets[f"noise-{sigma:g}"] = (real + sigma * torch.randn(real.shape, generator=generator)).clamp(0, 1)
    for sigma in BLUR:
        sets[f"blur-{sigma:g}"] = _blur(real, sigma).clamp(0, 1)
    sets["half-classes"] = of_classes((0, 1, 2, 3, 4))
    sets["one-class"] = of_classes((3,))
    sets["blobs"] = _blobs(n, generator)
    sets["pixel-noise"] = torch.rand(real.shape, generator=generator)
    sets["black"] = torch.zeros_like(real)
    sets["training-copies"] = train.images[torch.randperm(len(train.images), generator=generator)[:n]].float() / 255
    return sets


def held_out(data: Mapping[str, Split], seed: int = 0) -> tuple[dict[str, Split], dict[str, Split]]:
    """(what the metrics see, what the sets are drawn from): a random half of the test split is the
    metrics' reference, the other half the sets' source, so that no set's image (or the original of
    a noisy or blurred one) is in the reference; a set drawn from the reference itself would be inside
    its own k-NN balls and look more real than any model's samples can. Random, not the first and
    second halves: MNIST's first 5,000 test digits come from other writers than its last 5,000."""
    test = data["test"]
    order = torch.randperm(len(test.images), generator=torch.Generator().manual_seed(seed))
    halves = order[: len(order) // 2], order[len(order) // 2 :]
    reference, source = (Split(test.images[i], test.labels[i], f"{test.source}, random half {k + 1} of 2")
                         for k, i in enumerate(halves))
    return {**data, "test": reference}, {**data, "test": source}


def run_sanity(registries: Any, n: int, out: Path | None, data_dir: Path | None = None, device: str = "cpu",
               seed: int = 0, log: Callable[[str], None] = print) -> tuple[dict[str, dict[str, float]], list[Misranking]]:
    """Score every set with every installed metric, check the orders, write ``out`` when given."""
    from trilemma.data import default_data_dir
    from trilemma.execute import load_data
    from trilemma.metrics import EvalContext
    from trilemma.presets import PRESETS
    from trilemma.sampling import Samples

    dataset = registries.datasets["mnist"]
    data, pool = held_out(load_data(dataset, data_dir))
    metrics = {entry.name: entry.item for entry in registries.metrics.in_order()}
    cache_dir = Path(data_dir or default_data_dir()) / "fidelity-cache"
    torch_device = torch.device(device)

    def context(images: torch.Tensor) -> Any:
        # Real image sets are scored, not a model's draw: no model, no sampler (nor a metric that needs one).
        return EvalContext(model=None, model_name="sanity", sampler_name="set", sampler=None,  # type: ignore[arg-type]
                           samples=Samples(images, math.nan, math.nan), dataset=dataset, data=data,
                           device=torch_device, preset=PRESETS["quick"], seed=seed, cache_dir=cache_dir, log=log)

    table = score_sets(sample_sets(pool, n, seed), metrics, context, log)
    columns = ranked_columns(metrics)
    problems = check(table, columns) + check_marks(table, metrics)
    if out is not None:
        write_report(out, table, columns, problems, n, set_marks(table, metrics))
    return table, problems


@dataclass(frozen=True)
class Misranking:
    column: str
    better: str  # the set that should score better
    worse: str
    values: tuple[float, float]
    rule: str

    def describe(self) -> str:
        if self.column == "marks":
            return f"marks: {self.better or self.worse} [{self.rule}]"
        verb = "better than" if self.rule.startswith("monotone") else "at least as well as"
        return (f"{self.column}: {self.worse} ({self.values[1]:.4g}) scores {verb} {self.better} "
                f"({self.values[0]:.4g}) [{self.rule}]")


def _expected_pairs(judged: str) -> list[tuple[str, str, str]]:
    """(better set, worse set, rule) pairs a person would agree on, for a column judged so."""
    degraded = [*(f"noise-{s:g}" for s in NOISE), *(f"blur-{s:g}" for s in BLUR)]
    digits = ["real", *degraded, "half-classes", "one-class"]
    pairs = []
    for family, levels in (("noise", NOISE), ("blur", BLUR)):
        chain = ["real", *(f"{family}-{s:g}" for s in levels)]
        pairs += [(a, b, f"monotone in {family}") for a, b in zip(chain, chain[1:], strict=False)]
    if judged == "coverage":
        pairs += [("real", "half-classes", "fewer classes"), ("half-classes", "one-class", "fewer classes")]
        pairs += [("half-classes", other, "digits above non-digits") for other in NOT_DIGITS]
    else:
        pairs += [(digit, other, "digits above non-digits") for digit in digits for other in NOT_DIGITS]
    return pairs


def set_marks(table: Mapping[str, Mapping[str, float]], metrics: Mapping[str, Any]) -> dict[str, str]:
    """The marks the metrics would put on each set's row of a report."""
    from trilemma.metrics import joined_marks

    return {name: joined_marks(metrics.values(), dict(row)) for name, row in table.items()}


def check_marks(table: Mapping[str, Mapping[str, float]], metrics: Mapping[str, Any]) -> list[Misranking]:
    """A mark on a row says its samples are unlike digits: every non-digit set must carry one, and no
    set of digits (whatever their quality or classes) may."""
    found = []
    for name, marks in set_marks(table, metrics).items():
        if name in NOT_DIGITS and not marks:
            found.append(Misranking("marks", "", name, (math.nan, math.nan), "non-digits unmarked"))
        elif name not in NOT_DIGITS and marks:
            found.append(Misranking("marks", name, "", (math.nan, math.nan), f"digits marked {marks}"))
    return found


def check(table: Mapping[str, Mapping[str, float]], columns: Mapping[str, Column]) -> list[Misranking]:
    """Every expected pair that ``table`` (set → column → value) puts in the wrong order."""
    found = []
    for name, column in columns.items():
        if column.better not in ("higher", "lower") or column.judged == "none":
            continue
        for better, worse, rule in _expected_pairs(column.judged):
            a, b = table.get(better, {}).get(name), table.get(worse, {}).get(name)
            if a is None or b is None or math.isnan(a) or math.isnan(b):
                continue
            if rule.startswith("monotone"):  # a degradation may leave a saturated column as it was
                wrong = a < b if column.better == "higher" else a > b
            else:
                wrong = a <= b if column.better == "higher" else a >= b
            if wrong:
                found.append(Misranking(name, better, worse, (a, b), rule))
    return found


def score_sets(sets: Mapping[str, torch.Tensor], metrics: Mapping[str, Any],
               context: Callable[[torch.Tensor], Any], log: Callable[[str], None] = print
               ) -> dict[str, dict[str, float]]:
    """Every metric on every set (``context(images)`` builds its EvalContext); a metric that needs what
    a sample set lacks (a model, a sampler) scores nothing."""
    from dataclasses import replace

    table: dict[str, dict[str, float]] = {}
    for set_name, images in sets.items():
        base = context(images)
        row: dict[str, float] = {}
        for metric_name, metric in metrics.items():
            if not metric.applies_to(base.dataset):
                continue
            try:
                values = metric.compute(replace(base, settings={}))
            except Exception as exc:  # e.g. a metric that needs the model: not scored on a sample set
                log(f"  {set_name}: {metric_name} not scored ({type(exc).__name__}: {str(exc)[:120]})")
                continue
            row.update({k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        table[set_name] = row
        log(f"scored {set_name}")
    return table


def ranked_columns(metrics: Mapping[str, Any]) -> dict[str, Column]:
    """Every metric column with a better direction (headline or not), as the table shows and checks them."""
    return {c.name: c for m in metrics.values() for c in m.columns
            if (c.headline or c.better) and not c.is_family and not c.optional}


def write_report(out: Path, table: Mapping[str, Mapping[str, float]], columns: Mapping[str, Column],
                 problems: list[Misranking], n: int, marks: Mapping[str, str] | None = None) -> Path:
    """``out/results.csv`` (every column) and ``out/README.md`` (ranked columns, marks and mis-rankings)."""
    import pandas as pd

    from trilemma.files import atomic_write_text
    from trilemma.report_document import markdown_table

    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(table).T
    atomic_write_text(out / "results.csv", frame.to_csv(index_label="set"))
    shown = [c for c in columns if c in frame]
    head = frame[shown].rename(columns={c: f"{columns[c].label} {'↑' if columns[c].better == 'higher' else '↓'}"
                                        for c in shown}).map("{:.4g}".format)
    if marks:
        head["marks"] = [marks.get(name, "") for name in head.index]
    lines = ["# Metric sanity", "",
             f"`trilemma sanity --samples {n}`: sample sets whose order a person knows, scored by every installed "
             "metric that scores samples, against a random half of the MNIST test split; the sets come from the other "
             "half (and the training split for the copies), so no set's image is in the reference (speed and "
             "likelihood need a model and score nothing here). Expected, for each "
             "column with a better direction as it declares itself judged: each degradation (Gaussian noise σ "
             f"{', '.join(f'{s:g}' for s in NOISE)}; blur σ {', '.join(f'{s:g}' for s in BLUR)} px) worse than real and "
             "monotone; digits of any of these qualities above blobs, pixel noise and black; on coverage columns, fewer "
             "classes worse. Training copies are scored, not ranked. Marks (a report's warnings on a row) must be on "
             "every non-digit set and on no set of digits.", "",
             markdown_table(head.reset_index(names="set")), "",
             f"## Mis-rankings ({len(problems)})", ""]
    lines += [f"- {p.describe()}" for p in problems] or ["None."]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    return out / "README.md"
