"""``train.precision``: which dtype the matrix products run in, and why.

Master weights and optimiser state always stay float32; bf16/fp16 only change the compute dtype
of the forward pass (``torch.autocast``), so checkpoints and exact resume are the same in every
precision. ``auto`` takes bf16 only where the hardware computes it natively:

- CPU: AVX512-BF16 or AMX tiles. Without them bf16 is emulated (converted to float32 around each
  product) and slower than float32, so ``auto`` keeps float32 there.
- CUDA: devices that report bf16 support (Ampere and newer).

fp16 exists for older CUDA devices only and needs a gradient scaler (its range is too small for
unscaled gradients); on CPU it is refused.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@lru_cache(maxsize=1)
def cpu_bf16_native() -> tuple[bool, str]:
    """(native, what the CPU reports): bf16 computed in hardware (AVX512-BF16 or AMX)?"""
    cpu = getattr(torch, "cpu", None)
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    if not (amx or avx512_bf16):  # older torch: read the kernel's flags
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            flags = ""
        amx, avx512_bf16 = "amx_bf16" in flags, "avx512_bf16" in flags
    found = [name for name, ok in (("AMX", amx), ("AVX512-BF16", avx512_bf16)) if ok]
    capability = torch.backends.cpu.get_cpu_capability()
    if found:
        return True, f"the CPU has {' and '.join(found)} (torch capability {capability})"
    return False, f"the CPU has neither AVX512-BF16 nor AMX (torch capability {capability})"


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA device with bf16 support, a CPU with
    AVX512-BF16 or AMX (never another device type)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_bf16_native()[0]


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(``fp32`` | ``bf16`` | ``fp16``, one sentence saying why) for ``train.precision``."""
    if requested not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got '{requested}'")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if requested == "auto":
            return ("bf16", "the CUDA device supports bf16") if bf16 else (
                "fp32", "the CUDA device has no bf16 support")
        if requested == "bf16" and not bf16:
            raise ValueError("train.precision=bf16 but this CUDA device has no bf16 support")
        return requested, "asked for by train.precision"
    if device.type == "cpu":
        native, what = cpu_bf16_native()
        if requested == "auto":
            return ("bf16", what) if native else ("fp32", what + ": bf16 would be emulated")
        if requested == "fp16":
            raise ValueError("train.precision=fp16 needs a CUDA device (use bf16 or fp32 on a CPU)")
        if requested == "bf16" and not native:
            return "bf16", f"asked for by train.precision, although {what} (emulated, slow)"
        return requested, "asked for by train.precision"
    # mps and others: float32 unless asked
    if requested == "auto":
        return "fp32", f"no native bf16 check for device {device.type}"
    if requested == "fp16":
        raise ValueError(f"train.precision=fp16 needs a CUDA device, not {device.type}")
    return requested, "asked for by train.precision"


def autocast(precision: str, device: torch.device):
    """The forward pass's context: ``torch.autocast`` for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
