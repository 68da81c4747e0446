"""Training precision: fp32, or bf16 autocast (bf16 matrix products, fp32 weights, head and loss)."""

from __future__ import annotations

import torch

from vibbench.core.errors import VibbenchError, unknown_name_message

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise VibbenchError(unknown_name_message("precision", str(precision), PRECISIONS))
    return precision


def autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The autocast context of `precision` on `device` (disabled for fp32)."""
    check_precision(precision)
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=precision == "bf16")
