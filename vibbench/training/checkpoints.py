"""Checkpoints that cannot be silently wrong: one self-verifying file, written atomically.

The file is a torch.save of {"format", "config_hash", "sha256", "payload"} where payload holds
the serialized state as bytes and sha256 is its digest. Loading uses torch.load(weights_only=True)
only (no code can run from a cached file), then checks the digest and the config hash.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch

from vibbench.core.atomic import atomic_write_bytes
from vibbench.core.hashing import sha256_bytes
from vibbench.core.errors import VibbenchError

FORMAT = "vibbench-checkpoint-1"


def save_checkpoint(path: str | Path, state: dict, config_hash: str) -> None:
    inner = io.BytesIO()
    torch.save(state, inner)
    payload = inner.getvalue()
    outer = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "config_hash": config_hash,
            "sha256": sha256_bytes(payload),
            "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
        },
        outer,
    )
    atomic_write_bytes(path, outer.getvalue())


def load_checkpoint(path: str | Path, config_hash: str, map_location: str | torch.device = "cpu") -> dict:
    """Load and verify a checkpoint; a corrupt file or one made for another config is refused."""
    path = Path(path)
    advice = f"delete {path} (or rerun with --retrain) to train again"
    try:
        with warnings.catch_warnings():  # torch's notes about foreign pickle protocols: the file is refused or ours anyway
            warnings.simplefilter("ignore", UserWarning)
            outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or carrying non-tensor objects
        raise VibbenchError(f"checkpoint {path} is unreadable or unsafe ({type(exc).__name__}); {advice}") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise VibbenchError(f"{path} is not a vibbench checkpoint; {advice}")
    if outer.get("config_hash") != config_hash:
        raise VibbenchError(
            f"checkpoint {path} was made for config {str(outer.get('config_hash'))[:12]}, "
            f"not {config_hash[:12]}: it does not match its config; {advice}"
        )
    payload = outer["payload"].numpy().tobytes()
    if sha256_bytes(payload) != outer.get("sha256"):
        raise VibbenchError(f"checkpoint {path} fails its SHA-256 check (corrupt or tampered); {advice}")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
