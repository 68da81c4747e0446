"""The files of `vibbench bench`: throughput.csv / .md / .png / .pdf and compare.csv / compare_summary.csv / compare.md."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from vibbench.bench.cases import BENCHMARKS, HEAD_BENCHMARK, IMPLEMENTATIONS, MODEL_NAME
from vibbench.bench.compare import CompareResult
from vibbench.bench.throughput import BenchConfig
from vibbench.reporting.markdown import markdown_table
from vibbench.core.precision import PRECISIONS


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _fmt(value, spec: str, unit: str = "") -> str:
    """`value` formatted with `unit` appended, or a dash for a missing (None or NaN) value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec) + unit


def cpu_facts(prov: dict | None) -> str:
    """"; CPU capability AVX2, no native bf16" from a provenance record of a CPU run ("" otherwise): what decides
    whether bf16 is fast and which vector kernels torch picks, so every CPU timing states it."""
    if not prov or prov.get("device") != "cpu" or "cpu_capability" not in prov:
        return ""
    native = "native bf16" if prov.get("cpu_native_bf16") else "no native bf16 (bf16 emulated: far slower than fp32)"
    return f"; torch CPU capability {prov['cpu_capability']}, {native}"


def _throughput_conditions(df, cfg: BenchConfig, skipped: dict[str, str], prov: dict) -> list[str]:
    """The lines above the table: device, timing method, skipped implementations, the roofline's peak."""
    lines = [
        f"Device: `{prov['device_name']}` ({cfg.device}, {prov['cpu_threads']} CPU threads{cpu_facts(prov)}); torch {torch.__version__}; "
        f"model `{MODEL_NAME}` (784-1024-1024 MLP, K = 256).",
        f"Medians of every `torch.utils.benchmark.Timer.blocked_autorange` block (min_run_time {cfg.min_run_time:g} s), "
        f"{cfg.repeats} round(s) with the implementations of one row group measured in turn, in one process. "
        "On CUDA every call synchronizes the GPU. Samples = examples (rows) per second. Ratios between implementations "
        "measured side by side are more trustworthy than absolute numbers on a shared machine.",
        "",
    ]
    lines += [f"- `{impl}` skipped: {reason}." for impl, reason in skipped.items()]
    if not df["peak_bytes_per_second"].notna().any():
        lines.append(
            f"- Roofline columns are empty: the peak bandwidth of `{prov['device_name']}` is unknown "
            "(only GPUs in vibbench.bench.roofline.PEAKS are known; pass `--peak-bandwidth GB/s`, e.g. from a STREAM run)."
        )
    else:
        lines.append(
            f"- Peak: {df['peak_source'].dropna().iloc[0]}. Roofline fraction (VIB head rows) = minimum traffic "
            "(read 2K values, write n·K samples and 1 KL per row) / peak bandwidth / median. The fused head also "
            "writes std and log std (2K more per row), so its fraction cannot exceed (2K + nK + 1) / (4K + nK + 1) "
            "(0.88 at K = 256, n = 12)."
        )
    lines.append("- FLOP/s are nominal (matrix products; 3x forward for forward + backward; see vibbench/bench/roofline.py).")
    return lines


def throughput_markdown(df, cfg: BenchConfig, skipped: dict[str, str], prov: dict) -> str:
    """The Markdown table of throughput.csv with the conditions a reader needs to trust it."""
    header = ["benchmark", "impl.", "precision", "batch", "n", "median", "samples/s", "vs eager", "compile (s)", "GFLOP/s", "GB/s", "roofline"]
    rows = [
        [
            r.benchmark, r.implementation, r.precision, str(r.batch), str(r.n_samples), _fmt_time(r.median_seconds),
            f"{r.samples_per_second:,.0f}", _fmt(r.speedup_vs_eager, ".2f", "x"), _fmt(r.compile_seconds, ".1f"),
            _fmt(r.flops_per_second / 1e9, ",.1f"), _fmt(r.bytes_per_second / 1e9, ".1f"), _fmt(r.roofline_fraction * 100, ".1f", "%"),
        ]  # fmt: skip
        for r in df.itertuples(index=False)
    ]
    lines = ["# Throughput", "", *_throughput_conditions(df, cfg, skipped, prov), "", *markdown_table(header, rows)]
    return "\n".join(lines) + "\n"


def throughput_figure(df):
    """Samples per second against batch size: one panel per benchmark (columns) and sample count
    (rows), colour = implementation, line style = precision; log-log."""
    import seaborn as sns

    from vibbench.reporting.figures import new_figure, styled

    @styled
    def draw():
        benches = [b for b in BENCHMARKS + (HEAD_BENCHMARK,) if b in set(df.benchmark)]
        counts = sorted(set(df.n_samples))
        fig = new_figure(3.0 * len(benches) + 1.5, 2.6 * len(counts))
        axes = fig.subplots(len(counts), len(benches), squeeze=False)
        palette = dict(zip(IMPLEMENTATIONS, sns.color_palette("deep", len(IMPLEMENTATIONS))))
        for i, n in enumerate(counts):
            for j, bench in enumerate(benches):
                d = df[(df.benchmark == bench) & (df.n_samples == n)]
                if d.empty:
                    axes[i][j].set_visible(False)
                else:
                    _throughput_panel(axes[i][j], d, df, palette, legend=(i == 0 and j == 0), ylabel=(j == 0))
                    axes[i][j].set_title(f"{bench}, n = {n}")
        first = axes[0][0]
        if first.get_legend() is not None:
            handles, labels = first.get_legend_handles_labels()
            first.get_legend().remove()
            fig.legend(handles, labels, loc="outside right center", fontsize="small")
        fig.suptitle(f"VIB throughput on {df.device_name.iloc[0]} (torch {torch.__version__})")
        return fig

    return draw()


def _throughput_panel(ax, d, df, palette: dict, *, legend: bool, ylabel: bool) -> None:
    """One panel: samples/s of the rows `d` against the batch size on log axes, styled like the whole of `df`."""
    import matplotlib.ticker
    import seaborn as sns

    from vibbench.reporting.figures import log_scale

    impls = [i for i in IMPLEMENTATIONS if i in set(df.implementation)]
    precisions = [p for p in PRECISIONS if p in set(df.precision)]
    sns.lineplot(
        data=d, x="batch", y="samples_per_second", hue="implementation", hue_order=impls, palette=palette,
        style="precision", style_order=precisions, markers=True, dashes=True, ax=ax, legend=legend,
    )  # fmt: skip
    batches = sorted(set(d.batch))
    ax.set_xscale("log")
    ax.set_xticks(batches, [f"{b:,}" for b in batches])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(batches[0] / 2, batches[-1] * 2)
    log_scale(ax, "y", d.samples_per_second)
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s" if ylabel else "")


def compare_markdown(result: CompareResult, prov: dict | None = None) -> str:
    """compare.md: the summary of the trainer comparisons, one row per comparison and precision (`prov`, the
    run's provenance, adds the CPU's capability to the device line)."""
    first = result.runs.iloc[0]
    info = result.info
    header = ["comparison", "baseline", "candidate", "models", "steps", "baseline ex/s", "candidate ex/s", "ratio"]
    rows = [
        [
            r.comparison, f"{r.baseline} ({r.baseline_precision})", f"{r.candidate} ({r.candidate_precision})", str(r.models), str(r.steps),
            f"{r.baseline_examples_per_second:,.0f}", f"{r.candidate_examples_per_second:,.0f}",
            f"{r.ratio:.2f}x [{r.ratio_min:.2f}-{r.ratio_max:.2f}]",
        ]  # fmt: skip
        for r in result.summary.itertuples(index=False)
    ]
    lines = [
        "# Training throughput: our trainers against the conventional alternatives",
        "",
        f"Device: `{first.device_name}` ({first.device}{cpu_facts(prov)}); torch {first.torch}; dataset {first.dataset}, "
        f"{info['images']} images, {info['epochs']} epoch(s) of {info['steps_per_epoch']} steps, batch {first.batch}. "
        "Runs interleaved in one process (A B B A ...); examples/s summed over the models trained; ratio = candidate / baseline, "
        "median over repeats (min-max in brackets). One noisy machine: trust the ratios more than the absolute numbers.",
        "",
        *markdown_table(header, rows),
    ]
    flops = info.get("step_flops_per_example")
    limits = result.summary[result.summary.comparison.isin(["products", "products_update"])]
    if flops and len(limits):
        lines += [
            "",
            f"The limits: {info['pipeline_model']}'s training step does {flops / 1e6:.1f} MFLOP of matrix products per example "
            "(its linear layers' forward, weight-gradient and input-gradient products). `products` replays those products "
            "alone at the step's shapes, `products_update` adds the trainer's fused Adam step and EMA over the model's "
            "parameters: no trainer of this step can be faster than either. Their ratio is the share of that limit our "
            "trainer reaches. In GFLOP/s of those products:",
            "",
        ]
        for precision, d in limits.groupby("candidate_precision", sort=False):
            rate = {r.comparison: r.baseline_examples_per_second * flops / 1e9 for r in d.itertuples(index=False)}
            ours = d.candidate_examples_per_second.median() * flops / 1e9
            parts = [f"{c} {rate[c]:,.0f}" for c in ("products", "products_update") if c in rate]
            lines.append(f"- {precision}: {', '.join(parts)}; vibbench.train_model {ours:,.0f}")
            sweep = result.summary[(result.summary.comparison == "processes") & (result.summary.candidate_precision == precision)]
            if len(sweep) and "products" in rate:  # the products ran in this process on every core: the machine's rate
                r = sweep.iloc[0]
                swept = r.candidate_examples_per_second * flops / 1e9
                lines.append(
                    f"  - a sweep's models, {r.candidate} (`--executor processes`): {swept:,.0f} together, "
                    f"{swept / rate['products']:.0%} of `products` on every core of this machine"
                )
    return "\n".join(lines) + "\n"


def write_throughput(df, out_dir: Path, cfg: BenchConfig, skipped: dict[str, str], prov: dict) -> list[Path]:
    """throughput.csv, throughput.md and the figure (.png, .pdf), each written atomically."""
    from vibbench.core.atomic import atomic_write_text
    from vibbench.reporting.figures import save_figure

    out = Path(out_dir)
    atomic_write_text(out / "throughput.csv", df.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(out / "throughput.md", throughput_markdown(df, cfg, skipped, prov))
    return [out / "throughput.csv", out / "throughput.md", *save_figure(throughput_figure(df), out, "throughput")]


def write_compare(result: CompareResult, out_dir: str | Path, prov: dict | None = None) -> list[Path]:
    """compare.csv (per-repeat runs), compare_summary.csv and compare.md, each written atomically."""
    from vibbench.core.atomic import atomic_write_text

    out = Path(out_dir)
    paths = [out / "compare.csv", out / "compare_summary.csv", out / "compare.md"]
    atomic_write_text(paths[0], result.runs.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(paths[1], result.summary.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(paths[2], compare_markdown(result, prov))
    return paths
