"""Nominal work per call and the devices' peaks."""

import pytest

from vibbench.bench.roofline import device_peak, head_bytes, roofline_seconds


def test_the_vib_head_moves_its_inputs_samples_and_kl():
    # the fp32 head at B = 100, K = 256, n = 12: 100 rows x (512 + 3072 + 1) values x 4 bytes, about 1.4 MB
    assert head_bytes(100, 256, 12, 4) == pytest.approx(1.43e6, rel=0.01)
    assert head_bytes(16, 8, 3, 2) == 16 * (2 * 8 + 3 * 8 + 1) * 2


def test_device_peaks_match_the_most_specific_name():
    assert device_peak("NVIDIA H100 80GB HBM3").bytes_per_second == 3.35e12
    assert device_peak("NVIDIA H100 PCIe").bytes_per_second == 2.0e12
    assert device_peak("NVIDIA H200").bytes_per_second == 4.8e12
    assert device_peak("NVIDIA A100-SXM4-80GB").bytes_per_second == 2.039e12
    assert device_peak("NVIDIA A10").bytes_per_second == 0.6e12
    assert device_peak("NVIDIA L40S").bytes_per_second == 0.864e12
    assert device_peak("Intel(R) Xeon(R) Processor") is None
    assert device_peak("Intel(R) Xeon(R) Processor", bandwidth_gbs=20).bytes_per_second == 20e9


def test_the_roofline_is_the_slower_of_traffic_and_arithmetic():
    peak = device_peak("x", bandwidth_gbs=1.0, flops_tflops=1.0)  # 1e9 bytes/s, 1e12 FLOP/s
    assert roofline_seconds(peak, "fp32", 1e6, 1e6) == pytest.approx(1e-3)  # memory-bound
    assert roofline_seconds(peak, "fp32", 1e6, 1e10) == pytest.approx(1e-2)  # compute-bound
    assert roofline_seconds(peak, "fp32", 1e6, None) == pytest.approx(1e-3)
    v100 = device_peak("Tesla V100-SXM2-16GB")  # no bf16 peak: traffic alone
    assert roofline_seconds(v100, "bf16", 9e5, 1e15) == pytest.approx(1e-6)
