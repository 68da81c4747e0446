"""Arithmetic precision: fp32, or bf16 autocast (bf16 matrix products, fp32 weights, head and loss), for training
(`TrainConfig.precision`) and for the attacker's forward and backward passes (`AttackSettings.precision`).

bf16 helps only where the hardware multiplies bf16 natively: GPUs with bf16 support, and CPUs whose oneDNN
has a bf16 kernel (AVX-512 with bf16 instructions, or AMX). Elsewhere torch emulates it: on a 2-core AVX2
EPYC a bf16 1024x1024 product ran at 0.94 GFLOP/s against 178 in fp32, and training was 21x slower. So
`check_native_precision` refuses bf16 where it is not native, with the reason, before any training starts.
"""

from __future__ import annotations

import functools

import torch

from vibbench.core.errors import VibbenchError, unknown_name_message

PRECISIONS = ("fp32", "bf16")
ATTACK_PRECISIONS = ("auto", "fp32", "bf16")
"""The attacker's arithmetic: "auto" is bf16 where the device multiplies bf16 natively, else fp32."""


def check_precision(precision: str) -> str:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise VibbenchError(unknown_name_message("precision", str(precision), PRECISIONS))
    return precision


def cpu_capability() -> str:
    """torch's CPU capability (for example AVX2, AVX512), recorded with every timing."""
    return str(torch.backends.cpu.get_cpu_capability())


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: oneDNN has a bf16 kernel for it (AVX-512 bf16 or AMX) and torch's
    CPU capability is at least AVX-512."""
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn = False
    return onednn and cpu_capability().upper().startswith("AVX512")


def bf16_support(device: torch.device | str) -> tuple[bool, str]:
    """(native, reason): whether `device` multiplies bf16 natively, and why not when it does not."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)  # emulated bf16 (compute capability < 8) is slow
        return ok, "" if ok else f"the GPU {torch.cuda.get_device_name(device)} has no bf16 support"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return True, ""
        return False, f"this CPU has no native bf16 (torch CPU capability {cpu_capability()}; bf16 needs AVX-512 bf16 or AMX)"
    return False, f"bf16 is not checked on device type {device.type!r}"


def check_native_precision(device: torch.device | str, precision: str) -> str:
    """`precision`, refused with the reason when it is bf16 on a device that only emulates bf16 (there it is many
    times slower than fp32, not faster)."""
    if check_precision(precision) == "bf16":
        native, reason = bf16_support(device)
        if not native:
            raise VibbenchError(
                f"--precision bf16 refused: {reason}, so bf16 matrix products are emulated and far slower than fp32; "
                "train in fp32 (the default)"
            )
    return precision


def check_attack_precision(setting: str) -> str:
    """`setting`, refused unless it is one of ATTACK_PRECISIONS."""
    if not isinstance(setting, str) or setting not in ATTACK_PRECISIONS:
        raise VibbenchError(unknown_name_message("attack precision", str(setting), ATTACK_PRECISIONS))
    return setting


def attack_precision(device: torch.device | str, setting: str) -> str:
    """The precision the attacks compute in on `device` under the setting `setting` (one of ATTACK_PRECISIONS):
    "auto" is bf16 where bf16 is native (`bf16_support`), else fp32; "bf16" is refused where it is emulated."""
    if check_attack_precision(setting) == "auto":
        return "bf16" if bf16_support(device)[0] else "fp32"
    if setting == "bf16" and not bf16_support(device)[0]:
        raise VibbenchError(
            f"attack precision bf16 refused: {bf16_support(device)[1]}, so bf16 matrix products are emulated and far "
            "slower than fp32; use auto or fp32"
        )
    return setting


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The autocast context of `precision` on `device` (disabled for fp32)."""
    check_precision(precision)
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
