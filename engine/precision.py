"""Numeric precision of a run: autocast and the fp16 gradient scaler, one rule each.

``--amp none`` computes in float32; ``bf16`` autocasts to bfloat16 (CPU and CUDA); ``fp16``
autocasts to float16 and scales the loss with a ``GradScaler`` (CUDA only: CPU float16 kernels
are slow and partly missing). Training, evaluation, prediction and the benchmark use these.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

AMP_CHOICES = ("none", "bf16", "fp16")
AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(ValueError):
    """A precision the device cannot run; the message says what to use instead."""


def check_amp(amp: str, device: torch.device) -> None:
    if amp not in AMP_DTYPES:
        raise PrecisionError(f"--amp {amp}: expected one of {', '.join(AMP_CHOICES)}")
    if amp == "fp16" and device.type != "cuda":
        raise PrecisionError("--amp fp16 needs CUDA (use --amp bf16 on CPU)")


def autocast(device: torch.device, amp: str) -> AbstractContextManager:
    """The forward pass's autocast context (a no-op for float32)."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its range underflows small gradients); bf16 and float32 do not."""
    return torch.amp.GradScaler(device.type) if amp == "fp16" else None
