"""Sampling speed: NFE per sample (counted by the harness, cross-checked against the FLOPs the
sampler did), GFLOP per sample, wall time per sample, throughput, batch-1 latency and peak device
memory, timed after a warm-up with device synchronisation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch

from trilemma.columns import Column
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric, ReportSection
from trilemma.nfe import NFE_TOLERANCE
from trilemma.sampling import make_generator, synchronize
from trilemma.seeds import derived_seed
from trilemma.settings import Setting


@torch.no_grad()
def time_sampler(ctx: EvalContext, batch_size: int, repeats: int) -> tuple[float, float]:
    """Median seconds for one call of the sampler on ``batch_size`` samples after a warm-up call,
    and the seconds of that warm-up (allocations, lazy init, compilation)."""
    generator = make_generator(ctx.device, derived_seed(ctx.seed, "speed_timing"))
    ctx.model.eval()
    synchronize(ctx.device)
    start = time.perf_counter()
    ctx.sampler(batch_size, generator)
    synchronize(ctx.device)
    warm_up = time.perf_counter() - start
    times = []
    for _ in range(max(1, repeats)):
        synchronize(ctx.device)
        start = time.perf_counter()
        ctx.sampler(batch_size, generator)
        synchronize(ctx.device)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2], warm_up


@contextmanager
def compiled(networks: list[torch.nn.Module]) -> Iterator[None]:
    """The networks compiled in place for the block (``nn.Module.compile`` with
    ``mode="reduce-overhead"``: CUDA graphs, which remove the launch cost that dominates few-step
    samplers), then back to eager."""
    for net in networks:
        net.compile(mode="reduce-overhead", dynamic=False)
    try:
        yield
    finally:
        for net in networks:
            net._compiled_call_impl = None


def compiled_max_nfe(value: Any, device: torch.device) -> float:
    return (4 if device.type == "cuda" else 0) if value is None else float(value)


class SpeedMetric(Metric):
    name = "speed"
    needs = ("samples", "model")
    columns = (
        Column("nfe", better="lower", headline=True, title="NFE", fmt="{:g}", axis="cost",
               description="network evaluations per sample: the hook count, or the FLOP-based count where that is higher"),
        Column("nfe_hooks", description="forward calls of sampling_networks(), weighted by batch size, per sample"),
        Column("nfe_flops", description="the sampler's FLOPs over the FLOPs of one network pass, per sample"),
        Column("nfe_check", description="agree, or mismatch: the two NFE counts differ by more than 5%", text=True),
        Column("sample_gflop", better="lower", headline=True, title="GFLOP/sample", fmt="{:.3g}",
               description="matmul/conv/attention GFLOP the sampler spends per sample"),
        Column("ms_per_sample", better="lower", headline=True, title="ms/sample", fmt="{:.3g}"),
        Column("samples_per_s", better="higher", headline=True, title="samples/s", fmt="{:.4g}", axis="speed"),
        Column("latency_ms_batch1", better="lower", description="wall time of one batch-1 sampler call"),
        Column("ms_per_sample_b*", better="lower", description="ms per sample at batch size *"),
        Column("sampling_peak_mem_bytes", description="peak CUDA memory while sampling (NaN on the CPU)"),
        Column("ms_per_sample_compiled", better="lower", optional=True,
               description="ms per sample at the largest batch, networks compiled (CUDA graphs)"),
        Column("latency_ms_batch1_compiled", better="lower", optional=True),
        Column("ms_per_sample_compiled_b*", better="lower"),
        Column("compile_seconds", optional=True, description="warm-up (compilation) time of the compiled timing"),
    )
    protocol_keys = ()
    settings = (
        Setting("compiled_max_nfe", parse=int, default=None, protocol=False,
                help="also time samplers with at most this NFE with their networks compiled (CUDA graphs); "
                     "default 4 on CUDA, 0 (off) on the CPU, where compiling measured no gain"),
    )

    def compute(self, ctx: EvalContext) -> dict[str, Any]:
        check = ctx.samples.nfe_check
        row: dict[str, Any] = {"nfe": ctx.samples.nfe_per_sample, "nfe_hooks": ctx.samples.nfe_per_sample}
        if check is not None:
            row.update(nfe_flops=check.flop_nfe, sample_gflop=check.gflop_per_sample, nfe_check=check.verdict)
            if not check.agree and math.isfinite(check.flop_nfe):
                row["nfe"] = max(row["nfe"], check.flop_nfe)  # never under-count
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        row.update(self.timings(ctx, ""))
        row["samples_per_s"] = 1000 / row["ms_per_sample"]
        if 0 < row["nfe"] <= compiled_max_nfe(ctx.settings.get("compiled_max_nfe"), ctx.device):
            try:
                with compiled(ctx.model.sampling_networks()):
                    row.update(self.timings(ctx, "_compiled"))
            except Exception as exc:  # compilation is an extra measurement; its failure is said, not fatal
                ctx.log(f"{ctx.model_name}/{ctx.sampler_name}: compiled timing skipped: {type(exc).__name__}: {exc}")
        row["sampling_peak_mem_bytes"] = (
            torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else math.nan
        )
        return row

    def timings(self, ctx: EvalContext, suffix: str) -> dict[str, float]:
        row: dict[str, float] = {"latency_ms_batch1" + suffix: math.nan}
        warm_up = 0.0
        for batch_size in ctx.preset.speed_batch_sizes:
            seconds, warm = time_sampler(ctx, batch_size, ctx.preset.speed_repeats)
            warm_up += warm
            row[f"ms_per_sample{suffix}_b{batch_size}"] = 1000 * seconds / batch_size
            if batch_size == 1:
                row["latency_ms_batch1" + suffix] = 1000 * seconds
        row["ms_per_sample" + suffix] = row[f"ms_per_sample{suffix}_b{max(ctx.preset.speed_batch_sizes)}"]
        if suffix:
            row["compile_seconds"] = warm_up
        return row

    def report_section(self, frame: pd.DataFrame) -> ReportSection | None:
        """Every sampler's two NFE counts side by side, mismatches flagged first."""
        if "nfe_check" not in frame:
            return None
        rows = frame[frame["nfe_check"].isin(["agree", "mismatch"])]
        records, notes = [], []
        for (model, sampler), group in rows.groupby(["model", "sampler"], sort=False):
            verdict = "mismatch" if (group["nfe_check"] == "mismatch").any() else "agree"
            hooks, flops = group["nfe_hooks"].max(), group["nfe_flops"].max()
            records.append({"model": model, "sampler": sampler, "NFE (hooks)": f"{hooks:g}",
                            "NFE (FLOPs)": f"{flops:.4g}", "GFLOP/sample": f"{group['sample_gflop'].mean():.4g}",
                            "check": verdict})
            if verdict == "mismatch":
                notes.append(f"⚠ {model}/{sampler}: hooks counted {hooks:g} NFE per sample but its FLOPs imply "
                             f"{flops:.4g}; the NFE column reports the larger. Its sampler evaluates networks it does "
                             "not list in sampling_networks(), or calls them without their forward hooks.")
        if not records:
            return None
        notes.append(f"NFE counted by forward hooks on sampling_networks(), and independently as the sampler's FLOPs "
                     f"(torch.utils.flop_counter, on a probe batch) over the FLOPs of one network pass; they agree "
                     f"within {NFE_TOLERANCE:.0%} in {sum(r['check'] == 'agree' for r in records)} of {len(records)} "
                     "samplers.")
        return ReportSection("NFE cross-check", pd.DataFrame(records), notes)

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        return {
            "summary": f"NFE counted by forward hooks and cross-checked against FLOPs; wall time per sample at "
                       f"batch sizes {list(ctx.preset.speed_batch_sizes)} (median of {ctx.preset.speed_repeats} after "
                       f"a warm-up, device synchronised) on {ctx.device}",
            "nfe": "forward calls of sampling_networks(), weighted by batch size, per sample; cross-checked on a "
                   "probe batch by torch.utils.flop_counter (sampler FLOPs / FLOPs of one hooked pass); where the "
                   "two differ by more than 5% the row says mismatch and nfe is the larger",
            "batch_sizes": list(ctx.preset.speed_batch_sizes),
            "repeats": ctx.preset.speed_repeats,
            "ms_per_sample": f"median over repeats after one warm-up, at batch size {max(ctx.preset.speed_batch_sizes)}",
            "device": str(ctx.device),
        }


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(SpeedMetric())
