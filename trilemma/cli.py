"""The ``trilemma`` command: ``list``, ``run``, ``eval``, ``report``, ``sanity``, ``classifier`` and ``autoencoder``."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trilemma.errors import TrilemmaError
from trilemma.presets import PRECISIONS, PRESET_CHOICES

if TYPE_CHECKING:
    from trilemma.plugins import Registries

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``trilemma: error: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"trilemma: error: {message} (see `{self.prog} --help`)\n")


MAX_SEED = 2**32 - 1
#: The pinned networks the metrics judge samples with: command → (what it is, default epochs).
PINNED = {"classifier": ("MNIST classifier", 4), "autoencoder": ("MNIST autoencoder (the second feature space)", 3)}


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], refused with the valid range otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"≥ {low}"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {text!r}")
        return value
    return parse


def positive_number(unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number > 0 of ``unit``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be a number of {unit} > 0, got {text!r}")
        return value

    return parse


positive_seconds = positive_number("seconds")


def curve_fractions(text: str) -> tuple[float, ...]:
    """``--curves``: ``none``, or increasing shares of the budget in (0, 1), comma-separated."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or any(not 0 < v < 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"must be 'none' or increasing shares in (0, 1) such as 0.25,0.5, got {text!r}")
    return values


def parse_overrides(items: Sequence[str], flag: str = "--set") -> dict[str, dict[str, str]]:
    """``model.field=value`` items → ``{model: {field: value}}``."""
    overrides: dict[str, dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        model, dot, field = target.partition(".")
        if not sep or not dot or not model or not field:
            raise TrilemmaError(f"malformed {flag} {item!r}; expected MODEL.FIELD=VALUE, e.g. vae.latent_dim=8")
        overrides.setdefault(model.strip(), {})[field.strip()] = value.strip()
    return overrides


def add_setting_flags(parser: argparse.ArgumentParser, registries: Registries,
                      kinds: Sequence[str] = ("metric", "executor")) -> dict[str, tuple[str, str, str]]:
    """One flag per setting the registered metrics and executors declare; returns argparse dest →
    (kind, owner, setting)."""
    dests = {}
    for kind, registry in (("metric", registries.metrics), ("executor", registries.executors)):
        if kind not in kinds:
            continue
        for entry in registry.entries():
            for setting in entry.item.settings:
                dest = f"setting:{kind}:{entry.name}:{setting.name}"
                try:
                    parser.add_argument(setting.flag_for(entry.name), *setting.aliases, dest=dest, type=setting.parse,
                                        default=None, metavar=setting.name.upper(),
                                        help=f"{setting.help} ({kind} {entry.name}, {entry.provider})")
                except argparse.ArgumentError as exc:
                    print(f"warning: {kind} {entry.name} ({entry.provider}): setting {setting.name} not available: "
                          f"{exc}", file=sys.stderr)
                    continue
                dests[dest] = (kind, entry.name, setting.name)
    return dests


def build_parser(registries: Registries | None = None) -> argparse.ArgumentParser:
    """The command line; with ``registries``, ``run`` also takes every metric's declared settings."""
    parser = OneLineParser(prog="trilemma", description="Benchmark generative models on quality, speed and coverage.")
    from trilemma import __version__

    parser.add_argument("--version", action="version", version=f"trilemma {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    listing = sub.add_parser("list", help="models, metrics and datasets, with the plugin that provides each")
    listing.add_argument("--check", action="store_true",
                         help="also build each model at its smoke config and count every sampler's NFE both ways "
                              "(hooks and FLOPs): slow")

    run = sub.add_parser("run", help="train and evaluate models")
    run.add_argument("models", nargs="*", help="model names (see `trilemma list`)")
    run.add_argument("--all", action="store_true", help="every installed model")
    run.add_argument("--preset", default="auto", help=f"one of {', '.join(PRESET_CHOICES)} (default auto)")
    run.add_argument("--seed", type=whole_number(0, MAX_SEED), action="append", dest="seed_list", metavar="N",
                     help="seed; repeat for several (default 0)")
    run.add_argument("--seeds", type=whole_number(1, 10_000), metavar="K", help="seeds 0..K-1")
    run.add_argument("--set", action="append", default=[], metavar="MODEL.FIELD=VALUE", dest="overrides",
                     help="override a model's config field; repeatable")
    run.add_argument("--sweep", action="append", default=[], metavar="MODEL.FIELD=V1,V2,...", dest="sweeps",
                     help="train one variant of the model per value (several --sweep: every combination); "
                          "each variant is a model row of its own, e.g. ddpm.objective=eps,x0,v")
    run.add_argument("--out", type=Path, help="run directory (default reports/run-<time>)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    datasets = f": {', '.join(registries.datasets.names())}" if registries is not None else ""
    run.add_argument("--dataset", default="mnist", help=f"dataset name (default mnist){datasets}")
    run.add_argument("--data-dir", type=Path, help="where MNIST lives (default ~/.cache/trilemma)")
    run.add_argument("--sampler", action="append", default=[], metavar="[MODEL/]METHOD[:K=V,...]", dest="samplers",
                     help="evaluate this sampler instead of the preset's, e.g. ddim:steps=20,eta=1 or "
                          "ddpm/heun:steps=5 (unprefixed: every model that has the method); repeatable")
    run.add_argument("--resume", action="store_true",
                     help="skip cells already finished in --out under the same identity (model, config, budget, "
                          "dataset, plugin version, precision, threads); a changed one is refused")
    run.add_argument("--retrain-changed", action="store_true",
                     help="with --resume: train cells recorded under another identity again and replace their rows")
    run.add_argument("--images", type=whole_number(1), help="train every model on this many images instead")
    run.add_argument("--steps", type=whole_number(1), help="train every model for this many steps instead")
    run.add_argument("--train-pflop", type=positive_number("PFLOP"), metavar="PFLOP",
                     help="train every model on this much compute instead (steps from each model's counted FLOPs "
                          "per step): compute-matched rows, compared only with other compute-matched runs")
    run.add_argument("--train-seconds", type=positive_seconds,
                     help="cap each model's training at this wall time (recorded; capped rows are marked and "
                          "never compared with uncapped ones)")
    run.add_argument("--curves", type=curve_fractions, metavar="F1,F2,...|none",
                     help="learning-curve points as shares of the budget (the preset's by default: quick and up "
                          "evaluate at 1/8, 1/4, 1/2 and the end); 'none' for no curves")
    run.add_argument("--precision", default="auto", choices=PRECISIONS,
                     help="training precision: bf16 autocast where the device and the model allow it (auto), or fp32")
    run.add_argument("--threads", type=whole_number(1),
                     help="torch threads per cell on a CPU (default 1; part of a cell's identity, since the thread "
                          "count changes the trained weights; the cores are used by --jobs)")
    executors = f"; installed: {', '.join(registries.executors.names())}" if registries is not None else ""
    run.add_argument("--executor", default="local",
                     help=f"how cells run (default local: on this machine, --jobs at once){executors}")
    trackers = f"; installed: {', '.join(registries.trackers.names())}" if registries is not None else ""
    run.add_argument("--log", action="append", default=[], metavar="TRACKER", dest="trackers",
                     help=f"also log each cell to an experiment tracker (repeatable){trackers}")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    run.set_defaults(setting_dests=add_setting_flags(run, registries) if registries is not None else {})

    evaluate = sub.add_parser("eval", help="evaluate a run's trained checkpoints with other samplers or metrics, "
                                           "without training; adds or replaces those rows")
    evaluate.add_argument("run_dir", type=Path, help="a run directory written by `trilemma run`")
    evaluate.add_argument("models", nargs="*", help="row models of the run (default: all)")
    evaluate.add_argument("--sampler", action="append", default=[], metavar="[MODEL/]METHOD[:K=V,...]",
                          dest="samplers", help="sampler spec, e.g. ddim:steps=5 (default: each model's preset samplers)")
    evaluate.add_argument("--seed", type=whole_number(0, MAX_SEED), action="append", dest="seed_list", metavar="N",
                          help="only this seed's cells; repeatable (default: every seed with rows)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    evaluate.add_argument("--data-dir", type=Path, help="where MNIST lives (default ~/.cache/trilemma)")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    evaluate.set_defaults(setting_dests=add_setting_flags(evaluate, registries, kinds=("metric",))
                          if registries is not None else {})

    report = sub.add_parser("report", help="render report.md / report.html for run directories")
    report.add_argument("runs", nargs="+", type=Path, help="run directories; several are pooled (seeds aggregated)")
    report.add_argument("--compare", action="store_true", help="put two runs side by side with the differences")
    report.add_argument("--out", type=Path, help="where to write a pooled or comparison report")
    report.add_argument("--force", action="store_true",
                        help="pool or compare runs even when their protocols differ (or, compared, share no rows)")
    report.add_argument("--all-columns", action="store_true",
                        help="with --compare: every numeric column, not only the headline ones")
    report.add_argument("--seed-spread", action="append", default=[], metavar="RUN",
                        help="with --compare: quote FID's training-seed spread per row, measured in this run "
                             "(several seeds; repeat to pool runs)")

    sanity = sub.add_parser("sanity", help="score sample sets of known order (real, noisy, blurred, blobs, noise, "
                                           "one class...) with every metric and list the pairs each mis-ranks")
    sanity.add_argument("--samples", type=int, default=1000, help="images per set, 10 to 5000 (default 1000)")
    sanity.add_argument("--out", type=Path, help="write results.csv and README.md here")
    sanity.add_argument("--data-dir", type=Path, help="where MNIST lives (default ~/.cache/trilemma)")
    sanity.add_argument("--device", default="cpu")

    for network, (what, epochs) in PINNED.items():
        pinned = sub.add_parser(network, help=f"the pinned {what}")
        actions = pinned.add_subparsers(dest="action", required=True, parser_class=OneLineParser)
        actions.add_parser("info", help="how it was trained, how well it does, and its weights' hash")
        train = actions.add_parser("train", help="reproduce the shipped weights")
        train.add_argument("--out", type=Path, help=f"where to write the weights (default {network}-reproduction)")
        train.add_argument("--epochs", type=int, default=epochs)
        train.add_argument("--seed", type=int, default=0)
        train.add_argument("--device", default="cpu")
        train.add_argument("--data-dir", type=Path)
    return parser


COUNTING_NOTE = """\
  counted: calls of sampling_networks() through their forward hooks (innermost listed calls, weighted by
  batch size) and, independently, every matmul/conv/attention FLOP of the draw over one counted item's
  FLOPs; the parameters the draw used; weights handed out of torch; duplicates; the count of one sample
  drawn alone. Not defensible in-process: work done before the draw (in training or at build time) and
  stored, and work outside torch on copies made before the draw (docs/plugin-hooks.md, "What is counted")."""


def cmd_list(registries: Registries, check: bool = False) -> int:
    from trilemma.sampling import check_model_samplers

    print("models (samplers at the smoke config, drawn as a run draws them, a batch of 2 then 1 sample alone: "
          "NFE counted by hooks / implied by FLOPs, GFLOP per sample):" if check
          else "models (with their smoke samplers; `trilemma list --check` counts their NFE):")
    for entry in registries.models.entries():
        try:
            teacher = entry.item.teacher_name(entry.item.Config())
        except Exception:  # noqa: BLE001 - a plugin's fault shows when it runs
            teacher = ""
        print(f"  {entry.name:<22} {entry.provider}" + (f"   (learns from {teacher})" if teacher else ""))
        if not check:
            try:
                shown = ", ".join(str(spec) for spec in entry.item.sampler_specs("smoke"))
            except Exception as exc:
                shown = f"cannot list: {type(exc).__name__}: {exc}"
            print(f"      samplers: {shown}")
            continue
        try:
            checks = check_model_samplers(entry.item)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a model that cannot even be built is listed, not fatal
            print(f"      NFE check failed: {type(exc).__name__}: {exc}")
            continue
        for sampler, counted in checks.items():
            flags = f"   flagged: {', '.join(counted.flags)}" if counted.flags else ""
            print(f"      {sampler:<18} NFE {counted.hook_nfe:g} / {counted.flop_nfe:.4g}   "
                  f"{counted.gflop_per_sample:.4g} GFLOP   {counted.verdict}{flags}")
    if check:
        print(COUNTING_NOTE)
    print("metrics:")
    for entry in registries.metrics.entries():
        columns = ", ".join(c.heading for c in entry.item.columns)
        flags = ", ".join(s.flag_for(entry.name) for s in entry.item.settings)
        print(f"  {entry.name:<22} {entry.provider}")
        print(f"      needs {', '.join(entry.item.needs)}; columns: {columns}" + (f"; settings: {flags}" if flags else ""))
    for title, registry in (("datasets", registries.datasets), ("executors", registries.executors),
                            ("trackers", registries.trackers)):
        print(f"{title}:")
        if not len(registry):
            print("  (none)")
        for entry in registry.entries():
            print(f"  {entry.name:<22} {entry.provider}")
    if registries.broken or registries.conflicts():
        print("problems:")
        for broken in registries.broken.values():
            print(f"  broken plugin {broken.name} ({broken.distribution}): {broken.error}")
        for conflict in registries.conflicts():
            print(f"  conflict: {conflict}")
    return EXIT_OK


def given_settings(args: argparse.Namespace, kind: str) -> dict[str, dict[str, object]]:
    """The settings of metrics (or executors) given on the command line, by owner."""
    given: dict[str, dict[str, object]] = {}
    for dest, (owner_kind, owner, name) in args.setting_dests.items():
        value = getattr(args, dest, None)
        if owner_kind == kind and value is not None:
            given.setdefault(owner, {})[name] = value
    return given


def parse_samplers(items: Sequence[str]) -> dict[str, list[str]]:
    """``[MODEL/]SPEC`` items → ``{model or "": [spec, ...]}``."""
    found: dict[str, list[str]] = {}
    for item in items:
        model, slash, spec = item.partition("/")
        if not slash:
            model, spec = "", item
        if slash and not model.strip():
            raise TrilemmaError(f"malformed --sampler {item!r}; expected [MODEL/]METHOD[:KEY=VALUE,...]")
        found.setdefault(model.strip(), []).append(spec.strip())
    return found


def finish_run(out: Path, run_call: Callable[[], int]) -> int:
    """Run, render the report and print the summary; the exit code says whether any row failed."""
    try:
        failed = run_call()
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished rows are in {out / 'results.csv'}; add --resume to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    from trilemma.report import print_summary, render_run

    print(f"report: {render_run(out)} (and report.html)")
    print_summary(out)
    if failed:
        print(f"{failed} row(s) failed; see the error column of {out / 'results.csv'}", file=sys.stderr)
        return EXIT_FAILED_ROWS
    return EXIT_OK


def cmd_eval(args: argparse.Namespace, registries: Registries) -> int:
    from trilemma.plan import RunRequest, plan_eval
    from trilemma.rundir import RunDirectory
    from trilemma.runner import run

    directory = RunDirectory(args.run_dir)
    if not directory.manifest_path.exists():
        raise TrilemmaError(f"{args.run_dir}: no manifest.json; is it a trilemma run directory?")
    manifest = directory.read_manifest()
    recorded: dict[str, set[int]] = {}
    for row in directory.load_table().rows:
        recorded.setdefault(str(row["model"]), set()).add(int(row["seed"]))
    request = RunRequest(models=list(dict.fromkeys(args.models)), seeds=list(dict.fromkeys(args.seed_list or [])),
                         out_dir=args.run_dir, device=args.device, dataset=manifest.get("dataset", "mnist"),
                         data_dir=args.data_dir, progress=not args.no_progress, verbose=args.verbose,
                         metric_settings=given_settings(args, "metric"), samplers=parse_samplers(args.samplers),
                         command=["trilemma", *args.argv])
    plan = plan_eval(request, registries, manifest, recorded)
    return finish_run(args.run_dir, lambda: run(request, registries, plan=plan))


def cmd_run(args: argparse.Namespace, registries: Registries) -> int:
    from trilemma.plan import RunRequest
    from trilemma.runner import run

    seeds = list(args.seed_list or []) + (list(range(args.seeds)) if args.seeds else [])
    seeds = list(dict.fromkeys(seeds)) or [0]
    overrides = parse_overrides(args.overrides)
    sweeps: dict[str, dict[str, list[str]]] = {}
    for model, fields in parse_overrides(args.sweeps, flag="--sweep").items():
        sweeps[model] = {field: [v.strip() for v in value.split(",") if v.strip()] for field, value in fields.items()}
    for broken in registries.broken.values():
        print(f"warning: plugin {broken.name} ({broken.distribution}) is broken: {broken.error}", file=sys.stderr)
    if args.all and args.models:
        raise TrilemmaError("give model names or --all, not both")
    models = registries.models.names() if args.all else list(dict.fromkeys(args.models))
    if not models:
        valid = ", ".join(registries.models.names()) or "none installed"
        raise TrilemmaError(f"name the models to run, or --all; installed: {valid}")
    if args.all and args.dataset in registries.datasets:  # --all: every model that takes this dataset
        channels = registries.datasets[args.dataset].channels
        models = [m for m in models if channels in registries.models[m].data_channels]
    out = args.out or Path("reports") / time.strftime("run-%Y%m%d-%H%M%S")
    request = RunRequest(models=models, preset=args.preset, seeds=seeds, overrides=overrides, out_dir=out,
                         device=args.device, dataset=args.dataset, data_dir=args.data_dir, resume=args.resume,
                         progress=not args.no_progress, verbose=args.verbose, train_steps=args.steps,
                         train_images=args.images, train_seconds=args.train_seconds, precision=args.precision,
                         train_pflop=args.train_pflop, trackers=list(dict.fromkeys(args.trackers)),
                         threads=args.threads, metric_settings=given_settings(args, "metric"), sweeps=sweeps,
                         executor_settings=given_settings(args, "executor"), samplers=parse_samplers(args.samplers),
                         retrain_changed=args.retrain_changed, executor=args.executor, curves=args.curves,
                         command=["trilemma", *args.argv])
    if args.retrain_changed and not args.resume:
        raise TrilemmaError("--retrain-changed only applies with --resume (without it every cell trains anew)")
    return finish_run(out, lambda: run(request, registries))


def cmd_sanity(args: argparse.Namespace, registries: Registries) -> int:
    from trilemma.sanity import run_sanity

    if not 10 <= args.samples <= 5000:
        print("trilemma sanity: --samples must be between 10 and 5000 (the sets come from half the test split)",
              file=sys.stderr)
        return EXIT_USAGE
    table, problems = run_sanity(registries, args.samples, args.out, args.data_dir, args.device)
    print(f"{len(table)} sets scored; {len(problems)} mis-ranked pairs" + (f"; written to {args.out}" if args.out else ""))
    for problem in problems:
        print(f"  {problem.describe()}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from trilemma.report import render_runs

    if args.all_columns and not args.compare:
        raise TrilemmaError("--all-columns only applies with --compare")
    render_runs(args.runs, out=args.out, force=args.force, compare=args.compare, all_columns=args.all_columns,
                spread_runs=args.seed_spread)
    return EXIT_OK


def cmd_pinned(args: argparse.Namespace) -> int:
    """``trilemma classifier|autoencoder info|train``."""
    import importlib

    module = importlib.import_module(f"trilemma.{args.command}")
    shipped = getattr(module, f"{args.command}_info")()

    def describe(info: Any) -> str:
        return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in vars(info).items())

    if args.action == "info":
        print(describe(shipped))
        return EXIT_OK
    out = args.out or Path(f"{args.command}-reproduction")
    info = module.train_and_save(out, args.data_dir, epochs=args.epochs, seed=args.seed, device=args.device)
    print(f"wrote {out}: {describe(info)} "
          f"({'identical to' if info.sha256 == shipped.sha256 else 'differs from'} the shipped weights)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    registries: Registries | None = None
    if argv[:1] in (["run"], ["list"], ["eval"], ["sanity"]):
        from trilemma.plugins import collect

        registries = collect()
    try:
        args = build_parser(registries).parse_args(argv)
    except SystemExit as exc:  # usage errors (already printed on one line) and --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.argv = argv
    try:
        if registries is not None and args.command == "list":
            return cmd_list(registries, args.check)
        if registries is not None and args.command == "run":
            return cmd_run(args, registries)
        if registries is not None and args.command == "eval":
            return cmd_eval(args, registries)
        if registries is not None and args.command == "sanity":
            return cmd_sanity(args, registries)
        if args.command == "report":
            return cmd_report(args)
        return cmd_pinned(args)
    except TrilemmaError as exc:
        print(f"trilemma: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def entry() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
