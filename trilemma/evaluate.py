"""Evaluating one sampler of a trained model: draw the samples once, save a grid, run every metric."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from trilemma.data import Split
from trilemma.datasets import Dataset
from trilemma.errors import BadSamples
from trilemma.metrics import EvalContext, Metric
from trilemma.model import GenerativeModel
from trilemma.presets import Preset
from trilemma.progress import progress_bar
from trilemma.samplers import Sampler
from trilemma.sampling import Samples, draw


class MetricsFailed(RuntimeError):
    """Some metrics failed; ``partial`` holds the columns the others computed, ``protocols``
    their descriptions."""

    def __init__(self, message: str, partial: dict[str, Any], protocols: dict[str, dict[str, Any]]) -> None:
        super().__init__(message)
        self.partial = partial
        self.protocols = protocols


@dataclass
class Evaluation:
    """The columns of one row and how each metric computed them."""

    columns: dict[str, Any]
    protocols: dict[str, dict[str, Any]]
    samples: Samples | None = None


def save_grid(images: torch.Tensor, path: Path) -> None:
    """The first samples as an 8-wide grid PNG (the report embeds it)."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images, path, nrow=8, padding=2, pad_value=0.5)


def evaluate_sampler(model: GenerativeModel, model_name: str, sampler_name: str, sampler: Sampler, *,
                     metrics: Mapping[str, Metric], metric_settings: Mapping[str, Mapping[str, Any]],
                     dataset: Dataset, data: dict[str, Split], preset: Preset, seed: int, grid_path: Path,
                     cache_dir: Path, progress: bool, log: Callable[[str], None],
                     samples: Samples | None = None) -> Evaluation:
    """Draw ``preset.eval_samples`` samples (or take ``samples`` already drawn by the harness's counted
    draw), save their grid, and compute every metric that applies to ``dataset``. Raises
    ``MetricsFailed`` (with the other metrics' columns) if any metric fails."""
    where = f"{model_name}/{sampler_name}"
    started = time.perf_counter()
    if samples is None:
        samples = draw(model, sampler, preset.eval_samples, batch_size=preset.sample_batch_size,
                       seed=seed, where=where, progress=progress)
    elif samples.nfe_check is None or len(samples.images) != preset.eval_samples:
        raise ValueError(f"{where}: samples given for evaluation must be {preset.eval_samples} from a counted draw")
    drawn = time.perf_counter() - started
    check = samples.counted
    if check.hook_nfe == 0:
        raise BadSamples(f"{where} called none of its sampling_networks() through their forward hooks "
                         f"(NFE counted 0) while doing {check.gflop_per_sample:.4g} GFLOP per sample: "
                         "list the networks it evaluates in sampling_networks() and call them as net(x)")
    save_grid(samples.images[:64], grid_path)
    base = EvalContext(model=model, model_name=model_name, sampler_name=sampler_name, sampler=sampler,
                       samples=samples, dataset=dataset, data=data, device=model.device, preset=preset, seed=seed,
                       cache_dir=cache_dir, log=log)
    # The parameters the draw used, and where the row's time goes.
    columns: dict[str, Any] = {"sampling_params": check.sampling_params, "seconds_draw": drawn}
    protocols: dict[str, dict[str, Any]] = {}
    errors = []
    images, pristine = samples.images, samples.images.clone()
    bar = progress_bar(metrics.items(), enabled=progress, desc=f"metrics {where}", leave=False, unit="metric")
    for metric_name, metric in bar:
        if not metric.applies_to(dataset):
            continue
        bar.set_postfix_str(metric_name, refresh=True)
        ctx = replace(base, settings=metric_settings.get(metric_name, {}))
        started = time.perf_counter()
        try:
            values = metric.compute(ctx)
            undeclared = sorted(k for k in values if not any(c.matches(k) for c in metric.columns))
            if undeclared:
                raise ValueError(f"returned column(s) it does not declare: {', '.join(undeclared)}")
            if samples.images is not images or not torch.equal(images, pristine):
                raise ValueError("changed the shared samples; the other metrics read them")
            columns.update(values)
            protocols[metric_name] = metric.protocol(ctx)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a metric's fault, SystemExit included, fails this row only
            log(f"{where}: metric {metric_name} failed: {type(exc).__name__}: {exc}")
            errors.append(f"metric {metric_name}: {type(exc).__name__}: {exc}")
        finally:  # whatever a metric did to the shared samples, the next one sees the originals
            columns[metric_time_column(metric_name)] = time.perf_counter() - started
            samples.images = images
            if not torch.equal(images, pristine):
                images.copy_(pristine)
    log(f"{where} seed {seed}: " + ", ".join(summary(columns, metrics)))
    if errors:
        raise MetricsFailed("; ".join(errors), columns, protocols)
    return Evaluation(columns, protocols, samples)


def metric_time_column(metric_name: str) -> str:
    """The harness's column of a metric's time on a row."""
    return "seconds_metric_" + metric_name.replace("-", "_")


def summary(row: Mapping[str, Any], metrics: Mapping[str, Metric]) -> list[str]:
    """What the console prints after each evaluation: the metrics' headline columns, as declared."""
    shown = []
    for column in (c for metric in metrics.values() for c in metric.columns if c.headline and not c.is_family):
        value = row.get(column.name)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            try:
                shown.append(f"{column.label}={column.fmt.format(value)}")
            except (ValueError, TypeError):
                shown.append(f"{column.label}={value}")
    return shown
