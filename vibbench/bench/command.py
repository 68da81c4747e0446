"""`vibbench bench`: its options (`add_bench_parser`), the command (`cmd_bench`) and what it runs (`run_bench`)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from vibbench.core.errors import VibbenchError, check_positive_int

if TYPE_CHECKING:  # for annotations only: importing these at run time loads torch, which `vibbench --help` avoids
    from vibbench.bench.compare import CompareConfig, CompareResult
    from vibbench.bench.throughput import BenchConfig


@dataclass
class BenchOutput:
    out_dir: Path
    throughput: object | None = None  # pandas DataFrame
    compare: CompareResult | None = None
    files: list[Path] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)


def run_bench(
    out_dir: str | Path,
    cfg: BenchConfig,
    *,
    throughput: bool = True,
    compare: Sequence[CompareConfig] = (),
    progress: Callable[[str], None] | None = None,
) -> BenchOutput:
    """Measure and write throughput.csv / .md / .png / .pdf (and compare.* for the comparisons
    `compare`, one result per config, e.g. per precision) plus provenance.json into `out_dir`,
    every file atomically."""
    import pandas as pd

    from vibbench.bench.compare import compare_training, concat_compare
    from vibbench.bench.output import write_compare, write_throughput
    from vibbench.bench.throughput import CSV_COLUMNS, throughput_rows
    from vibbench.core.hashing import stable_hash
    from vibbench.core.atomic import write_json
    from vibbench.runs.provenance import provenance

    out = Path(out_dir)
    result = BenchOutput(out)
    t0 = time.perf_counter()
    config = {"bench": cfg.to_dict(), "throughput": throughput, "compare": [dataclasses.asdict(c) for c in compare]}
    prov = provenance(config_hash=stable_hash(config), run_id=f"bench-{cfg.device}", seeds=[0], device=cfg.device, extra={"config": config})
    if throughput:
        rows, skipped = throughput_rows(cfg, progress)
        result.throughput = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
        result.files += write_throughput(result.throughput, out, cfg, skipped, prov)
        prov["skipped_implementations"] = skipped
    if compare:
        result.compare = concat_compare([compare_training(c, progress) for c in compare])
        result.files += write_compare(result.compare, out, prov)
    prov["wall_seconds"] = time.perf_counter() - t0
    prov["files"] = [p.name for p in result.files]
    write_json(out / "provenance.json", prov)
    result.files.append(out / "provenance.json")
    result.provenance = prov
    return result


# ---------------------------------------------------------------------------------------------
# the command line (wired in cli.py)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    try:
        for v in values:
            check_positive_int("each value", v)
    except VibbenchError as exc:  # argparse shows an ArgumentTypeError's words (a ValueError's it replaces)
        raise argparse.ArgumentTypeError(str(exc)) from None
    return values


def _choice_list(choices: Iterable[str]):
    choices = tuple(choices)

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v for v in text.replace(",", " ").split())
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(choices)} separated by commas, got {text!r}")
        return values

    return parse


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add `vibbench bench` to the CLI's subparsers (the CLI runs it with `cmd_bench(args)`). Its options are
    added by `bench_options` only when `bench` is parsed or its help shown (`build=`, the CLI's lazy parser):
    their help texts name the benchmarks and precisions, whose modules import torch."""
    return subparsers.add_parser(
        "bench",
        help="measure throughput (forward, loss, training step, 12-sample eval, VIB head) and optionally compare trainers",
        description="Throughput of the VIB classifier per implementation, precision and batch size, measured interleaved "
        "in one process; writes throughput.csv/.md/.png/.pdf and provenance.json (and compare.* with --compare).",
        build=bench_options,
    )


def bench_options(p: argparse.ArgumentParser) -> None:
    """The options of `vibbench bench`."""
    from vibbench.bench.cases import BENCHMARKS, IMPLEMENTATIONS
    from vibbench.bench.throughput import BATCH_SIZES, HEAD_BATCH_SIZES
    from vibbench.core.precision import PRECISIONS

    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--out", type=Path, help="output folder (default: results/bench-<device>)")
    p.add_argument("--quick", action="store_true", help="batch 100, eager only, short timing: minutes on 2 CPU cores")
    p.add_argument("--batch-sizes", type=_int_list, metavar="N,N", help=f"model batch sizes (default: {','.join(map(str, BATCH_SIZES))}; --quick: 100)")
    p.add_argument("--head-batch-sizes", type=_int_list, metavar="N,N", help=f"VIB head batch sizes (default: {','.join(map(str, HEAD_BATCH_SIZES))})")
    p.add_argument("--n-samples", type=_int_list, metavar="N,N", help="samples of z (default: 1,12; eval always uses 12)")
    p.add_argument("--benchmarks", type=_choice_list(BENCHMARKS), metavar="B,B", help=f"subset of {','.join(BENCHMARKS)} (the VIB head always runs)")
    p.add_argument("--implementations", type=_choice_list(IMPLEMENTATIONS), metavar="I,I", help="subset of eager,compile,fused (default: all available; --quick: eager)")
    p.add_argument("--precisions", type=_choice_list(PRECISIONS), metavar="P,P", help="subset of fp32,bf16 (default: both)")
    p.add_argument("--min-run-time", type=float, metavar="S", help="seconds per timed block (default 0.2; --quick 0.05)")
    p.add_argument("--repeats", type=int, metavar="R", help="interleaved rounds (default 3; --quick 1)")
    p.add_argument("--peak-bandwidth", type=float, metavar="GB/S", help="the device's peak memory bandwidth, for the roofline where the table lacks it")
    p.add_argument("--peak-tflops", type=float, metavar="TFLOP/S", help="the device's peak FLOP/s (with --peak-bandwidth)")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput grid (with --compare: comparisons only)")
    p.add_argument("--compare", action="store_true", help="also compare our trainers with a conventional loop, populations and (on the CPU) worker processes each on its share of the cores with one-by-one training, and our trainer with the limits of its step (its matrix products alone, and with the weight update)")
    p.add_argument("--compare-steps", type=int, default=200, metavar="N", help="training steps per comparison run (default 200)")
    p.add_argument("--compare-repeats", type=int, default=2, metavar="R", help="interleaved repeats of each comparison (default 2)")
    p.add_argument(
        "--compare-precisions", type=_choice_list(PRECISIONS), metavar="P,P",
        help="our trainers' precisions in the comparison (default fp32, and bf16 where the device multiplies it natively; "
        "the conventional loop stays fp32, as public reproductions train)",
    )  # fmt: skip
    p.add_argument("--compare-models", nargs="+", metavar="PATTERN", help="registry patterns of the population comparison (default: the quick profile's models)")
    p.add_argument("--dataset", default="mnist", help="dataset of the comparison (default mnist; synthetic needs no files)")
    p.add_argument("--data-dir", type=Path, help="datasets (default: $VIBBENCH_DATA_DIR, else $XDG_CACHE_HOME/vibbench/data, else ~/.cache/vibbench/data)")


def bench_config_from_args(args) -> BenchConfig:
    """The throughput grid the options ask for (`--quick` as the base, the given options over it)."""
    from vibbench.bench.throughput import BenchConfig
    from vibbench.runs.config import resolve_device

    changes = {
        "device": resolve_device(args.device),
        "batch_sizes": args.batch_sizes,
        "head_batch_sizes": args.head_batch_sizes,
        "n_samples": args.n_samples,
        "benchmarks": args.benchmarks,
        "implementations": args.implementations,
        "precisions": args.precisions,
        "min_run_time": args.min_run_time,
        "repeats": args.repeats,
        "peak_bandwidth_gbs": args.peak_bandwidth,
        "peak_tflops": args.peak_tflops,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.peak_tflops is not None and args.peak_bandwidth is None:
        raise VibbenchError("--peak-tflops needs --peak-bandwidth too (the roofline is memory-bound first)")
    if "min_run_time" in changes and changes["min_run_time"] <= 0:
        raise VibbenchError(f"--min-run-time must be positive, got {changes['min_run_time']}")
    if "repeats" in changes:
        check_positive_int("--repeats", changes["repeats"])
    return BenchConfig.quick(**changes) if args.quick else BenchConfig(**changes)


def compare_configs_from_args(args, device: str) -> list[CompareConfig]:
    """One comparison per `--compare-precisions` entry (none without `--compare`)."""
    from vibbench.bench.compare import CompareConfig

    check_positive_int("--compare-steps", args.compare_steps)
    check_positive_int("--compare-repeats", args.compare_repeats)
    if not args.compare:
        return []
    models = tuple(args.compare_models) if args.compare_models else None
    precisions = args.compare_precisions or default_compare_precisions(device)
    return [
        CompareConfig(steps=args.compare_steps, device=device, dataset=args.dataset, data_dir=args.data_dir, repeats=args.compare_repeats, precision=p, models=models)
        for p in precisions
    ]


def default_compare_precisions(device: str) -> tuple[str, ...]:
    """fp32, and bf16 where `device` multiplies it natively. Where bf16 is emulated (a CPU without AVX-512 bf16 or
    AMX) a bf16 comparison would run many times slower than fp32 and show only that; the throughput grid still
    measures bf16 there, which is where the trap shows, and `--compare-precisions fp32,bf16` asks for it anyway."""
    from vibbench.core.progress import log
    from vibbench.core.precision import bf16_support

    native, reason = bf16_support(device)
    if native:
        return ("fp32", "bf16")
    log(f"bench: the comparison runs in fp32 only: {reason} (--compare-precisions fp32,bf16 measures bf16 anyway)")
    return ("fp32",)


def check_bench(cfg: BenchConfig, implementations: Sequence[str] | None, compare: Sequence[CompareConfig]) -> None:
    """What `vibbench bench` checks before it measures anything or loads any data: the implementations asked for
    by name run on the device (the default, all of them, skips those that do not, and throughput.md says why), and
    each comparison's settings, dataset name and model patterns are valid."""
    from vibbench.bench.cases import unavailable_reason

    for impl in implementations or ():
        reason = unavailable_reason(impl, cfg.device)
        if reason and impl == "fused" and cfg.device == "cpu":  # the reason may suggest TRITON_INTERPRET=1, which tests, not times
            reason = "the fused head needs CUDA; on the CPU it runs only under Triton's interpreter (TRITON_INTERPRET=1), for tests, not timing"
        if reason:
            raise VibbenchError(f"--implementations {impl} cannot be measured on {cfg.device}: {reason}. Leave it out, or measure on a CUDA device")
    for c in compare:
        c.check()


def cmd_bench(args) -> None:
    """`vibbench bench`: measure, write the files, print the folder (and the comparison ratios)."""
    from vibbench.core.progress import log

    cfg = bench_config_from_args(args)
    if args.no_throughput and not args.compare:
        raise VibbenchError("--no-throughput leaves nothing to do without --compare")
    compare = compare_configs_from_args(args, cfg.device)
    check_bench(cfg, args.implementations if not args.no_throughput else None, compare)
    out = args.out or Path("results") / f"bench-{cfg.device}"
    result = run_bench(out, cfg, throughput=not args.no_throughput, compare=compare, progress=log)
    if result.compare is not None:
        from vibbench.bench.output import compare_markdown

        print(compare_markdown(result.compare, result.provenance), end="")
    print(result.out_dir)
