"""The `vibbench` command line: run, eval, report, compare, show, export, bench, list, data.

Each subcommand imports what it needs when it runs, so `vibbench --help` and `vibbench list` load no
more than they use. The options of run, eval and data are added to their parsers only when that
subcommand is parsed or its help shown: their help texts name the profiles, datasets and devices,
whose modules import torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from vibbench.core.errors import VibbenchError, check_positive_int, describe_os_error, unknown_name_message

STARTED = time.perf_counter()
"""When the command started (this module is imported first): a run's wall time counts from here."""


def _positive_int(text: str) -> int:
    """argparse type: a positive integer, refused in the words of `check_positive_int`."""
    try:
        value = int(text)
    except ValueError:
        value = text  # not a number: refused below, in the same words
    try:
        return check_positive_int("the value", value)
    except VibbenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _installed_version() -> str:
    """The installed package's version (its metadata, as pip sees it)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("vibbench")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: run pip install -e .)"


class _Parser(argparse.ArgumentParser):
    """A parser whose usage errors are one line, as every other error of vibbench: the message, then where the usage is."""

    def error(self, message: str):
        self.exit(2, f"vibbench: error: {message} (usage: {self.prog} --help)\n")


class _LazyParser(_Parser):
    """A subcommand's parser whose options `build(parser)` adds the first time it parses or formats its help."""

    def __init__(self, *args, build=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._build = build

    def _built(self) -> None:
        if self._build is not None:
            build, self._build = self._build, None
            build(self)

    def parse_known_args(self, args=None, namespace=None):
        self._built()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._built()
        return super().format_usage()

    def format_help(self) -> str:
        self._built()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vibbench", description="Benchmark suite for Variational Information Bottleneck classifiers.")
    parser.add_argument("--version", action="version", version=f"vibbench {_installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_LazyParser)
    sub.add_parser("run", help="train the registry under one config, evaluate it and write results/", build=_run_parser)
    sub.add_parser("eval", help="evaluate the cached models of a run (no training) and write results/", build=_eval_parser)

    report = sub.add_parser("report", help="rebuild report.md and figures/ of a results folder from its metrics.csv alone")
    report.add_argument("run_dir", type=Path, metavar="DIR")
    report.add_argument(
        "--allow-partial", action="store_true",
        help="report a metrics.csv that lacks some of the models or seeds config.json lists (or was cut off within its last row); the report says so at its top",
    )

    compare = sub.add_parser("compare", help="set the headline metrics of several runs side by side, with their differences and 95%% intervals")
    compare.add_argument("run_dirs", nargs="+", type=Path, metavar="DIR", help="results folders; the first is the reference (A)")
    compare.add_argument("-o", "--out", type=Path, metavar="FILE.md", help="where to write the comparison (default: results/compare-<hash of the run ids>.md); its figure goes beside it as FILE.png and FILE.pdf")
    compare.add_argument("--allow-different", action="store_true", help="compare runs of different datasets or evaluation sets (unpaired intervals)")

    show = sub.add_parser("show", help="print a results folder's summary, run id, wall time and where its report is")
    show.add_argument("run_dir", type=Path, metavar="DIR")

    sub.add_parser("export", help="write a trained model of a run to a file: its state_dict and the create_model spec", build=_export_parser)

    lst = sub.add_parser("list", help="print the model registry")
    lst.add_argument("patterns", nargs="*", metavar="PATTERN")
    _plugin_option(lst)

    from vibbench.bench.command import add_bench_parser

    add_bench_parser(sub)
    sub.add_parser("data", help="fetch, verify and cache datasets", build=_data_parser)
    return parser


def _run_parser(run: argparse.ArgumentParser) -> None:
    _run_options(run)
    run.add_argument("--retrain", action="store_true", help="ignore and replace cached jobs of this config")
    run.add_argument("--trainer", default="auto", help="auto, single or population (default auto: populations on CUDA and on AVX2 CPUs, where they measured faster; one at a time on other CPUs)")
    _executor_options(run)


def _eval_parser(evaluate: argparse.ArgumentParser) -> None:
    _run_options(evaluate)
    _executor_options(evaluate)
    own = evaluate.add_argument_group("your own models (evaluated as given, beside the registry's; with --model alone, only they)")
    own.add_argument(
        "--model", action=_OwnModelAction, dest="own_models", default=[], metavar="[LABEL=]FILE.py:FACTORY",
        help="FACTORY() in FILE.py (or package.module:FACTORY) returns a torch.nn.Module mapping images in [0, 1] shaped "
        "(B, 1, 28, 28) to (B, C) logits or log-probabilities; LABEL names it (default FACTORY) (repeatable)",
    )
    own.add_argument("--weights", action=_OwnModelAction, dest="own_models", metavar="PATH", help="a state_dict for the --model before it, read with torch.load(weights_only=True)")


class _OwnModelAction(argparse.Action):
    """--model appends [text, None] to args.own_models; --weights fills in the weights of the --model before it."""

    def __call__(self, parser, namespace, value, option_string=None):
        models = list(getattr(namespace, self.dest) or [])
        if option_string == "--model":
            models.append([value, None])
        elif not models or models[-1][1] is not None:
            raise argparse.ArgumentError(self, "give --weights PATH right after the --model it belongs to (one each)")
        else:
            models[-1][1] = value
        setattr(namespace, self.dest, models)


def _plugin_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin", action="append", default=[], metavar="MODULE",
        help="import MODULE (a dotted module name or a FILE.py path) first; it may register backbones and methods (repeatable)",
    )


def _export_parser(export: argparse.ArgumentParser) -> None:
    export.add_argument("run_dir", type=Path, metavar="DIR", help="the results folder of the run")
    export.add_argument("model", metavar="MODEL", help="the model's label in the run, e.g. mlp_vib or mlp_vib:beta=0.01")
    export.add_argument("--seed", type=int, default=0, help="which seed's model (default 0)")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="the file to write (a torch.save, loads with weights_only=True)")
    export.add_argument("--cache-dir", type=Path, help="the run cache holding the model (default: the one the run recorded, else the default cache folder)")
    _plugin_option(export)


def _data_parser(data: argparse.ArgumentParser) -> None:
    from vibbench.data.datasets import DATASETS

    data.add_argument("names", nargs="*", metavar="DATASET", help=f"default: mnist; any of {', '.join(DATASETS)}")
    data.add_argument("--data-dir", type=Path)


def _run_options(run: argparse.ArgumentParser) -> None:
    from vibbench.data.datasets import DATASETS
    from vibbench.runs.config import DEVICES, PROFILES

    # no defaults here: an option left out falls back to the --config file, then to the profile
    run.add_argument("--config", type=Path, metavar="FILE", help="options from a TOML or JSON file (*.toml, *.json); options given here override it")
    run.add_argument("--profile", help=f"one of {', '.join(PROFILES)} (default: quick)")
    run.add_argument("--models", nargs="+", metavar="PATTERN", help="shell-style patterns, optionally NAME:beta=1e-2 (default: the profile's)")
    run.add_argument("--seeds", type=_positive_int, metavar="N", help="train seeds 0..N-1 (default: the profile's)")
    run.add_argument("--dataset", help=f"one of {', '.join(DATASETS)} (default: mnist)")
    run.add_argument("--device", help=f"one of {', '.join(DEVICES)} (default: auto)")
    run.add_argument("--epochs", type=_positive_int, help="override the profile's number of epochs")
    run.add_argument("--out", type=Path, help="output folder (default: results/<run id>)")
    run.add_argument(
        "--overwrite", action="store_true",
        help="write into an --out holding another run (its files are replaced) or files vibbench did not write (they are kept)",
    )
    run.add_argument("--cache-dir", type=Path, help="checkpoints and job results (default: $VIBBENCH_CACHE_DIR, else $XDG_CACHE_HOME/vibbench, else ~/.cache/vibbench)")
    run.add_argument("--data-dir", type=Path, help="datasets (default: $VIBBENCH_DATA_DIR, else $XDG_CACHE_HOME/vibbench/data, else ~/.cache/vibbench/data)")
    run.add_argument("--precision", help="training precision: fp32 (the default) or bf16 (autocast; the attacks' arithmetic is --attack-precision)")
    run.add_argument(
        "--attack-precision",
        help="the robustness attacks' arithmetic: auto (bf16 autocast where the device multiplies bf16 natively, else fp32; "
        "the quick, table1 and paper profiles' setting), fp32 or bf16; the judge that scores every attack computes in fp32",
    )
    run.add_argument("--no-eval", action="store_true", help="clean accuracy only: skip robustness, calibration, OOD and shift")
    _plugin_option(run)


def _executor_options(run: argparse.ArgumentParser) -> None:
    from vibbench.runs.executors import DEFAULT_MAX_RETRIES, EXECUTORS, MAX_RETRIES

    run.add_argument(
        "--executor", default="auto",
        help=f"where the jobs run: one of {', '.join(EXECUTORS)} (local: one after the other in this process; processes: in parallel "
        "worker processes of this machine; default auto: processes for a run of several jobs on a CPU with several cores, else local)",
    )
    run.add_argument("--workers", type=_positive_int, metavar="N", help="worker processes of --executor processes or auto (default: one per CPU, at most 8), the CPUs shared out as their torch threads")
    ray = run.add_argument_group(
        "Ray executor (pip install 'vibbench[ray]')",
        "--cache-dir (and --data-dir, unless every node fetches its own copy) must be paths every node of the cluster reaches: a shared filesystem",
    )
    ray.add_argument("--ray-address", metavar="ADDRESS", help="the cluster to use: HOST:PORT or auto (default: $RAY_ADDRESS if set, else start a local Ray instance)")
    ray.add_argument("--ray-cpus-per-job", type=_positive_int, metavar="N", help="CPUs declared per job, also its torch threads (default: 1)")
    ray.add_argument("--ray-gpus-per-job", type=float, metavar="F", help="fraction of a GPU per job with --device cuda, in (0, 1] (default: 1)")
    ray.add_argument("--ray-max-retries", type=int, metavar="N", help=f"retries of a job whose worker died or hit a transient error, 0 to {MAX_RETRIES} (default: {DEFAULT_MAX_RETRIES})")


def run_options(args) -> dict:
    """The run's options: the --config file's, overridden by the options given on the command line."""
    from vibbench.runs.config_file import check_option, check_train_field, load_options

    options = load_options(args.config) if args.config is not None else {}
    given = {
        "profile": args.profile,
        "models": args.models,
        "seeds": args.seeds,
        "dataset": args.dataset,
        "device": args.device,
        "epochs": args.epochs,
        "no_eval": True if args.no_eval else None,
        "attack_precision": args.attack_precision,
    }
    options = options | {k: check_option(k, v, "--" + k.replace("_", "-")) for k, v in given.items() if v is not None}
    if args.precision is not None:  # a training field, like the file's [train] precision
        options["train"] = dict(options.get("train") or {}) | {"precision": check_train_field("precision", args.precision, "--precision")}
    return options


def cmd_run(args) -> None:
    import dataclasses

    from vibbench.models.plugins import load_plugins
    from vibbench.runs.config_file import run_config_from_options
    from vibbench.runs.executors import make_executor
    from vibbench.runs.jobs import resolve_trainer
    from vibbench.runs.runner import run

    plugins = load_plugins(args.plugin)  # before the models are resolved; the jobs' processes import them too
    options = run_options(args)
    cfg = dataclasses.replace(run_config_from_options(options, local_device=args.executor != "ray"), plugins=plugins)
    train = args.command == "run"
    own = []
    if getattr(args, "own_models", None):  # vibbench eval --model
        from vibbench.runs.own_models import load_own_model

        own = [load_own_model(text, weights) for text, weights in args.own_models]
        if "models" not in options:
            cfg = dataclasses.replace(cfg, models=())
    if train:
        resolve_trainer(args.trainer, cfg.device)  # a bad --trainer fails before anything runs
    executor = make_executor(
        args.executor, device=cfg.device, address=args.ray_address, cpus_per_job=args.ray_cpus_per_job,
        gpus_per_job=args.ray_gpus_per_job, max_retries=args.ray_max_retries, workers=args.workers,
        jobs=len(cfg.models) * len(cfg.seeds),
    )
    out = run(
        cfg,
        out_dir=args.out,
        cache_dir=args.cache_dir,
        data_dir=args.data_dir,
        retrain=train and args.retrain,
        train=train,
        trainer=args.trainer if train else "auto",
        executor=executor,
        overwrite=args.overwrite,
        started=STARTED,
        own_models=own,
    )
    print(out)


def cmd_report(args) -> None:
    from vibbench.reporting.report import write_report

    print(write_report(args.run_dir, allow_partial=args.allow_partial))


def cmd_compare(args) -> None:
    from vibbench.reporting.compare import write_comparison

    print(write_comparison(args.run_dirs, args.out, allow_different=args.allow_different))


def cmd_show(args) -> None:
    from vibbench.runs.folder import show_run

    print(show_run(args.run_dir), end="")


def cmd_export(args) -> None:
    from vibbench.runs.trained import export_model

    path = export_model(args.run_dir, args.model, args.seed, args.output, cache_dir=args.cache_dir, plugins=args.plugin)
    print(path)


def cmd_list(args) -> None:
    from vibbench.models.plugins import load_plugins
    from vibbench.models.registry import check_model, list_models

    load_plugins(args.plugin)
    names = list_models(args.patterns or None)
    if args.patterns and not names:
        shown = " ".join(args.patterns)  # every pattern matched nothing; the message lists all models
        raise VibbenchError(unknown_name_message("model or pattern", shown, list_models()))
    print(f"{'model':28} {'backbone':9} {'method':19} {'stochastic':10} hyperparameters")
    for name in names:
        backbone, method, _ = check_model(name)  # what create_model would build, without building it (no torch)
        hp = ", ".join(f"{k}={v:g}" for k, v in method.hyperparameters.items() if v)
        print(f"{name:28} {backbone:9} {method.name:19} {str(method.stochastic):10} {hp or '-'}")


def cmd_data(args) -> None:
    from vibbench.data.datasets import GENERATED, class_count, prepare_dataset

    for name in args.names or ["mnist"]:
        if name in GENERATED:  # nothing to fetch: said so, as the other datasets say where their files are
            print(f"{name}: generated in memory when a run loads it ({class_count(name)} classes; no files, nothing to fetch)")
            continue
        print(f"{name}: {prepare_dataset(name, args.data_dir)}")


def cmd_bench(args) -> None:
    from vibbench.bench.command import cmd_bench as bench

    bench(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        commands = {"run": cmd_run, "eval": cmd_run, "report": cmd_report, "compare": cmd_compare, "show": cmd_show, "export": cmd_export, "list": cmd_list, "data": cmd_data, "bench": cmd_bench}
        commands[args.command](args)
    except VibbenchError as exc:
        print(f"vibbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nvibbench: interrupted. Finished models and the last epoch checkpoint are kept; rerun the same command to resume.", file=sys.stderr)
        return 130
    except OSError as exc:  # disk full, read-only or vanished folders while running
        where = f"{exc.filename}: " if exc.filename else ""
        hint = f" {RESUME_HINT}" if args.command in ("run", "eval") else ""
        print(f"vibbench: error: {where}{describe_os_error(exc)}.{hint}", file=sys.stderr)
        return 2
    return 0


RESUME_HINT = "Finished models and the last epoch checkpoint are kept; fix it and rerun the same command to resume."


if __name__ == "__main__":
    sys.exit(main())
