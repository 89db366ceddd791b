"""Sampling speed: NFE per sample (counted by the harness, cross-checked against the FLOPs the
sampler did), GFLOP per sample, wall time per sample, throughput, batch-1 latency and peak device
memory, timed after a warm-up with device synchronisation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from trilemma.columns import Column
from trilemma.cost import device_peak_gflops
from trilemma.hookspecs import hookimpl
from trilemma.metrics import EvalContext, Metric, ReportSection
from trilemma.nfe import DISTINCT_SHARE, NFE_TOLERANCE, NFECheck, NFECounter
from trilemma.sampling import check_samples, distinct_share, make_generator, synchronize
from trilemma.seeds import derived_seed
from trilemma.settings import Setting


@dataclass
class Timing:
    """One batch size's timing: median seconds per call, the warm-up's seconds, the hook count per
    sample of the timed calls (NaN when they ran unhooked), and whether their outputs repeat."""

    seconds: float
    warm_up: float
    nfe: float
    duplicates: bool


@torch.no_grad()
def time_sampler(ctx: EvalContext, batch_size: int, repeats: int, hooked: bool = True) -> Timing:
    """Time one warm-up call and then ``repeats`` calls of the sampler on ``batch_size`` samples
    (device synchronised). The calls are the counted work: hooked like the draw (``hooked``; compiled
    networks are timed unhooked) and their outputs checked like scored samples, outside the timing."""
    generator = make_generator(ctx.device, derived_seed(ctx.seed, "speed_timing"))
    ctx.model.eval()
    counter = NFECounter(ctx.model.sampling_networks()) if hooked else None
    where = f"{ctx.model_name}/{ctx.sampler_name} (timed)"
    times, duplicates = [], False
    with counter.counting() if counter is not None else nullcontext():
        for _ in range(1 + max(1, repeats)):
            synchronize(ctx.device)
            start = time.perf_counter()
            images = ctx.sampler(batch_size, generator)
            synchronize(ctx.device)
            times.append(time.perf_counter() - start)
            check_samples(images, batch_size, ctx.model.channels, where)
            duplicates |= batch_size > 1 and distinct_share(images) < DISTINCT_SHARE
    warm_up, timed = times[0], sorted(times[1:])
    nfe = counter.items / (batch_size * len(times)) if counter is not None else math.nan
    return Timing(timed[len(timed) // 2], warm_up, nfe, duplicates)


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


#: A timed speed beyond this multiple of the device's measured fp32 matmul peak is flagged: no
#: sampler runs its convolutions and small matmuls faster than a large square matmul.
PEAK_MARGIN = 2.0

#: A scored draw's batch slower than this gives the throughput itself; a faster one is timed again.
RETIME_SECONDS = 2.0

#: What each flag in ``count_flags`` means (the report explains the flags it shows).
FLAGS = {
    "batch-dependent": "its count per sample drawing one sample alone differs from a full batch's; the larger is "
                       "reported",
    "weights-left-torch": "parameters of the model were handed out of torch (numpy, tolist) while it sampled; "
                          "work done on them there is not counted",
    "duplicates": "bit-identical copies among its samples; NFE is reported per distinct sample",
    "timing-differs": "its timed calls evaluated its networks a different number of times per sample than the "
                      "scored draw; the speed is not of the counted work",
    "faster-than-peak": f"GFLOP/sample × samples/s exceeds {PEAK_MARGIN:g}× the device's measured fp32 matmul peak; "
                        "the timed calls did not do the counted work",
}


def compiled_max_nfe(value: Any, device: torch.device) -> float:
    return (4 if device.type == "cuda" else 0) if value is None else float(value)


#: What is counted and how, and what cannot be defended in-process (report and protocol say it).
COUNTING = (
    "Every batch of the scored samples is counted (the last sample drawn alone): forward hooks count calls of "
    "sampling_networks() (innermost listed calls, weighted by batch size); torch.utils.flop_counter counts every "
    "matmul/conv/attention FLOP of the draw, giving a second NFE (draw FLOPs over one counted item's FLOPs); a "
    "TorchFunctionMode records the parameters the draw used (params (sampling)) and any handed out of torch. The "
    f"timed calls are hooked and checked like the draw, and their speed is held against {PEAK_MARGIN:g}× the "
    "device's measured peak. Training FLOPs come from up to 16 real steps spread over the run. A plugin is "
    "arbitrary Python in the harness's process, so some work cannot be counted there: samples or weights prepared "
    "before the draw (in training, at build time) and kept in the model or a module global, work outside torch on "
    "copies made before the draw, and a plugin that detects the counters (they are visible to it) and behaves "
    "differently in the uncounted timed calls beyond what the checks above see. Defending those needs a separate "
    "process per cell that receives only its batches, and counting every training step."
)


#: How rows made before the counted draw were counted (they have no ``nfe_batch1``).
PROBED = ("These rows predate the counted draw: NFE was counted by forward hooks on sampling_networks() over the "
          "draw and cross-checked by torch.utils.flop_counter on a separate 4-sample probe batch, which a sampler "
          "that behaves differently on small batches could pass (issue 22); no flags were computed.")


class SpeedMetric(Metric):
    name = "speed"
    needs = ("samples", "model")
    columns = (
        Column("nfe", better="lower", headline=True, title="NFE", fmt="{:g}", axis="cost",
               description="network evaluations per sample: the largest of the draw's counts (hooks, FLOPs, one "
                           "sample alone where that differs), per distinct sample"),
        Column("nfe_hooks", description="forward calls of sampling_networks(), weighted by batch size, per sample"),
        Column("nfe_flops", description="the sampler's FLOPs over the FLOPs of one network pass, per sample"),
        Column("nfe_check", description="agree, or mismatch: the two NFE counts differ by more than 5%", text=True),
        Column("nfe_batch1", description="the hook count of the one sample the draw makes alone"),
        Column("distinct_share", description="share of the scored samples that are not bit-identical copies"),
        Column("count_flags", text=True,
               description="what makes the row's cost or speed doubtful: " + ", ".join(FLAGS) + " (';'-joined)"),
        Column("sample_gflops", description="GFLOP/sample × samples/s of the fastest timing; flagged beyond "
                                            "PEAK_MARGIN × the device's measured fp32 peak"),
        Column("sample_gflop", better="lower", headline=True, title="GFLOP/sample", fmt="{:.3g}",
               description="matmul/conv/attention GFLOP the sampler spends per sample"),
        Column("ms_per_sample", better="lower", headline=True, title="ms/sample", fmt="{:.3g}",
               description="wall time per sample at the scored draw's batch size: the draw's own full batches "
                           "after the first when a batch takes over RETIME_SECONDS, else timed calls (see "
                           "speed_timed_on)"),
        Column("speed_timed_on", text=True, description="what ms_per_sample timed: 'scored draw' or 'timed calls'"),
        Column("samples_per_s", better="higher", headline=True, title="samples/s", fmt="{:.4g}", axis="speed"),
        Column("latency_ms_batch1", better="lower", description="wall time of one batch-1 sampler call"),
        Column("ms_per_sample_b*", better="lower", description="ms per sample of separately timed calls at batch size *"),
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
        if check is None:
            raise ValueError("the samples were not drawn by the harness's counted draw")
        flags = list(check.flags)
        row: dict[str, Any] = {"nfe": check.nfe, "nfe_hooks": check.hook_nfe, "nfe_flops": check.flop_nfe,
                               "nfe_check": check.verdict, "nfe_batch1": check.batch1_nfe,
                               "sample_gflop": check.gflop_per_sample, "distinct_share": check.distinct_share}
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        row.update(self.timings(ctx, "", check, flags))
        row.update(self.throughput(ctx, check, flags))
        if 0 < row["nfe"] <= compiled_max_nfe(ctx.settings.get("compiled_max_nfe"), ctx.device):
            try:
                with compiled(ctx.model.sampling_networks()):
                    row.update(self.timings(ctx, "_compiled", check, flags))
            except Exception as exc:  # compilation is an extra measurement; its failure is said, not fatal
                ctx.log(f"{ctx.model_name}/{ctx.sampler_name}: compiled timing skipped: {type(exc).__name__}: {exc}")
        row["sampling_peak_mem_bytes"] = (
            torch.cuda.max_memory_allocated(ctx.device) if ctx.device.type == "cuda" else math.nan
        )
        peak = device_peak_gflops(ctx.device, "fp32", ctx.cache_dir)
        fastest = min(value for key, value in row.items() if key.startswith("ms_per_sample") and math.isfinite(value))
        row["sample_gflops"] = check.gflop_per_sample * 1000 / fastest
        if row["sample_gflops"] > PEAK_MARGIN * peak:
            flags.append("faster-than-peak")
        row["count_flags"] = ";".join(dict.fromkeys(flags))
        if flags:
            ctx.log(f"{ctx.model_name}/{ctx.sampler_name}: ⚠ flagged {row['count_flags']}: "
                    + "; ".join(FLAGS[f] for f in dict.fromkeys(flags)))
        return row

    def throughput(self, ctx: EvalContext, check: NFECheck, flags: list[str]) -> dict[str, Any]:
        """ms per sample at the draw's batch size: the scored draw's own batch times when a batch takes
        longer than ``RETIME_SECONDS`` (counting's per-call cost is then a few percent, and timing again
        would cost minutes), else ``speed_repeats`` hooked calls timed at that batch size (cheap, and
        free of the FLOP counter's per-operation cost, which is large beside a fast sampler's batch)."""
        size, timed, seconds = ctx.samples.timed_batches()
        if seconds / timed * size > RETIME_SECONDS:
            ms, source = 1000 * seconds / timed, "scored draw"
        else:
            timing = time_sampler(ctx, size, ctx.preset.speed_repeats)
            self.check_timing(timing, size, check, flags)
            ms, source = 1000 * timing.seconds / size, "timed calls"
        return {"ms_per_sample": ms, "samples_per_s": 1000 / ms, "speed_timed_on": source}

    @staticmethod
    def check_timing(timing: Timing, batch_size: int, check: NFECheck, flags: list[str]) -> None:
        drawn = check.batch1_nfe if batch_size == 1 and math.isfinite(check.batch1_nfe) else \
            check.batch_nfe if math.isfinite(check.batch_nfe) else check.hook_nfe
        if math.isfinite(timing.nfe) and abs(timing.nfe - drawn) > NFE_TOLERANCE * max(timing.nfe, drawn):
            flags.append("timing-differs")
        if timing.duplicates:
            flags.append("duplicates")

    def timings(self, ctx: EvalContext, suffix: str, check: NFECheck, flags: list[str]) -> dict[str, float]:
        row: dict[str, float] = {"latency_ms_batch1" + suffix: math.nan}
        warm_up = 0.0
        for batch_size in ctx.preset.speed_batch_sizes:
            timing = time_sampler(ctx, batch_size, ctx.preset.speed_repeats, hooked=not suffix)
            warm_up += timing.warm_up
            row[f"ms_per_sample{suffix}_b{batch_size}"] = 1000 * timing.seconds / batch_size
            if batch_size == 1:
                row["latency_ms_batch1" + suffix] = 1000 * timing.seconds
            self.check_timing(timing, batch_size, check, flags)
        if suffix:
            row["ms_per_sample" + suffix] = row[f"ms_per_sample{suffix}_b{max(ctx.preset.speed_batch_sizes)}"]
            row["compile_seconds"] = warm_up
        return row

    def report_section(self, frame: pd.DataFrame) -> ReportSection | None:
        """Every sampler's counts side by side, mismatches and flags said first, and what is counted."""
        if "nfe_check" not in frame:
            return None
        rows = frame[frame["nfe_check"].isin(["agree", "mismatch"])]
        records, notes = [], []
        for (model, sampler), group in rows.groupby(["model", "sampler"], sort=False):
            verdict = "mismatch" if (group["nfe_check"] == "mismatch").any() else "agree"
            hooks, flops = group["nfe_hooks"].max(), group["nfe_flops"].max()
            flagged = sorted({f for value in group.get("count_flags", pd.Series(dtype=object)).dropna()
                              for f in str(value).split(";") if f})
            records.append({"model": model, "sampler": sampler, "NFE (hooks)": f"{hooks:g}",
                            "NFE (FLOPs)": f"{flops:.4g}", "NFE": f"{group['nfe'].max():.4g}",
                            "GFLOP/sample": f"{group['sample_gflop'].mean():.4g}", "check": verdict,
                            "flags": ", ".join(flagged)})
            if verdict == "mismatch":
                notes.append(f"⚠ {model}/{sampler}: hooks counted {hooks:g} NFE per sample but its FLOPs imply "
                             f"{flops:.4g}; the NFE column reports the larger. Its sampler evaluates networks it does "
                             "not list in sampling_networks(), calls them without their forward hooks, or hides "
                             "samples from the batch count.")
            for flag in flagged:
                notes.append(f"⚠ {model}/{sampler}: {flag}: {FLAGS.get(flag, flag)}.")
        if not records:
            return None
        counted_draw = "nfe_batch1" in rows and rows["nfe_batch1"].notna().all()
        clean = sum(r["check"] == "agree" and not r["flags"] for r in records)
        notes.append(f"{clean} of {len(records)} samplers agree within {NFE_TOLERANCE:.0%}"
                     + (" and carry no flag. " + COUNTING if counted_draw else ". " + PROBED))
        return ReportSection("NFE cross-check", pd.DataFrame(records), notes)

    def protocol(self, ctx: EvalContext) -> dict[str, Any]:
        return {
            "summary": f"NFE counted by forward hooks and cross-checked against FLOPs; wall time per sample of the "
                       f"scored draw at batch {ctx.preset.sample_batch_size} and of timed calls at batch sizes "
                       f"{list(ctx.preset.speed_batch_sizes)} (median of {ctx.preset.speed_repeats} after a warm-up, "
                       f"device synchronised) on {ctx.device}",
            "nfe": COUNTING,
            "batch_sizes": list(ctx.preset.speed_batch_sizes),
            "repeats": ctx.preset.speed_repeats,
            "ms_per_sample": f"wall time per sample at batch {ctx.preset.sample_batch_size}: the scored draw's own "
                             f"full batches after the first (the counted work as it ran, device synchronised per "
                             f"batch) where a batch takes over {RETIME_SECONDS:g} s, else the median of "
                             f"{ctx.preset.speed_repeats} hooked calls after a warm-up (the FLOP counter's "
                             "per-operation cost would weigh on a fast sampler)",
            "device": str(ctx.device),
        }


@hookimpl
def register_metrics(register: Callable[..., None]) -> None:
    register(SpeedMetric())
