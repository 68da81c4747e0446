"""The work one benchmarked call does, and the fastest a device could do it.

FLOPs are nominal: 2 per multiply-add of the matrix products (forward 4.75 MFLOP per example and
sample-independent, plus 2 * n * K * 10 for the decoder), 3x the forward for forward + backward;
the VIB head counts `HEAD_FLOPS_PER_ELEMENT` per (row, latent) plus 2 per sample. The head's
`bytes` are the minimum any implementation must move (read 2K values per row, write n * K samples
and one KL per row), so the roofline fraction = max(bytes / peak bandwidth, flops / peak FLOP/s)
divided by the measured median: 1.0 would be a kernel at the memory roofline.
"""

from __future__ import annotations

from dataclasses import dataclass

MLP_LAYERS = ((784, 1024), (1024, 1024), (1024, 2 * 256))  # backbone and encoder head of mlp_vib
HEAD_FLOPS_PER_ELEMENT = 10
"""Nominal FLOPs per (row, latent) of the head besides sampling: shift, softplus (exp, add, log),
log std, and the KL terms (mu^2, std^2, -2 log std, -1, sum). Only the order of magnitude matters:
at well under 1 FLOP per byte the head is memory-bound on every device."""


def model_flops(benchmark: str, batch: int, n_samples: int, latent_dim: int = 256, num_classes: int = 10) -> float:
    """Nominal FLOPs of one call of a model benchmark (matrix products only; see the module docstring)."""
    forward = 2.0 * batch * (sum(i * o for i, o in MLP_LAYERS) + n_samples * latent_dim * num_classes)
    return forward * (3.0 if benchmark in ("loss", "train_step") else 1.0)


def head_bytes(batch: int, latent_dim: int, n_samples: int, element_size: int) -> float:
    """Minimum traffic of the VIB head: read 2K statistics per row, write n * K samples and one KL."""
    return float(batch * (2 * latent_dim + n_samples * latent_dim + 1) * element_size)


def head_flops(batch: int, latent_dim: int, n_samples: int) -> float:
    """Nominal FLOPs of the VIB head on `batch` rows (see `HEAD_FLOPS_PER_ELEMENT`)."""
    return float(batch * latent_dim * (HEAD_FLOPS_PER_ELEMENT + 2 * n_samples))


# ---------------------------------------------------------------------------------------------
# device peaks (vendor spec sheets, dense)


@dataclass(frozen=True)
class Peak:
    bytes_per_second: float
    fp32_flops: float | None  # non-tensor-core fp32 (matmuls stay fp32 with TF32 off)
    bf16_flops: float | None  # dense tensor-core bf16
    source: str

    def flops(self, precision: str) -> float | None:
        return self.bf16_flops if precision == "bf16" else self.fp32_flops


PEAKS: tuple[tuple[str, Peak], ...] = (
    # more specific names first: "H100" also matches "H100 PCIe", "A10" matches "A100", "L4" "L40S"
    ("H200", Peak(4.8e12, 67e12, 989e12, "H200 SXM spec: HBM3e 4.8 TB/s, bf16 989 TFLOP/s dense")),
    ("H100 NVL", Peak(3.9e12, 60e12, 835e12, "H100 NVL spec: HBM3 3.9 TB/s, bf16 835 TFLOP/s dense")),
    ("H100 PCIe", Peak(2.0e12, 51e12, 756e12, "H100 PCIe spec: HBM2e 2.0 TB/s, bf16 756 TFLOP/s dense")),
    ("H100", Peak(3.35e12, 67e12, 989e12, "H100 SXM spec: HBM3 3.35 TB/s, bf16 989 TFLOP/s dense")),
    ("A100-SXM4-80GB", Peak(2.039e12, 19.5e12, 312e12, "A100 SXM 80GB spec: HBM2e 2.04 TB/s")),
    ("A100 80GB PCIe", Peak(1.935e12, 19.5e12, 312e12, "A100 PCIe 80GB spec: HBM2e 1.94 TB/s")),
    ("A100", Peak(1.555e12, 19.5e12, 312e12, "A100 40GB spec: HBM2 1.56 TB/s")),
    ("A10G", Peak(0.6e12, 31.2e12, 125e12, "A10G spec: GDDR6 600 GB/s")),
    ("A10", Peak(0.6e12, 31.2e12, 125e12, "A10 spec: GDDR6 600 GB/s")),
    ("L40S", Peak(0.864e12, 91.6e12, 362e12, "L40S spec: GDDR6 864 GB/s")),
    ("L4", Peak(0.3e12, 30.3e12, 121e12, "L4 spec: GDDR6 300 GB/s")),
    ("V100", Peak(0.9e12, 15.7e12, None, "V100 SXM2 spec: HBM2 900 GB/s, no bf16")),
    ("T4", Peak(0.32e12, 8.1e12, None, "T4 spec: GDDR6 320 GB/s, no bf16")),
    ("RTX 4090", Peak(1.008e12, 82.6e12, 165e12, "RTX 4090 spec: GDDR6X 1.01 TB/s")),
)


def device_peak(device_name: str, *, bandwidth_gbs: float | None = None, flops_tflops: float | None = None) -> Peak | None:
    """The device's peak from `PEAKS` (first substring match of its name), or the values given.

    Given values win (they are the user's measurement, e.g. a STREAM run on a CPU); a CPU has
    no table entry, so without them its roofline columns stay empty."""
    if bandwidth_gbs is not None:
        flops = flops_tflops * 1e12 if flops_tflops is not None else None
        return Peak(bandwidth_gbs * 1e9, flops, flops, f"given: {bandwidth_gbs:g} GB/s" + (f", {flops_tflops:g} TFLOP/s" if flops else ""))
    for key, peak in PEAKS:
        if key.lower() in device_name.lower():
            return peak
    return None


def roofline_seconds(peak: Peak, precision: str, nbytes: float, flops: float | None) -> float:
    """The least time one call can take at `peak`: its minimum traffic over the bandwidth, or its
    FLOPs over the peak FLOP/s of `precision` where that is the larger (and known)."""
    bound = nbytes / peak.bytes_per_second
    peak_flops = peak.flops(precision)
    if peak_flops is not None and flops is not None:
        bound = max(bound, flops / peak_flops)
    return bound
