"""The precision of a run's forward passes (`train.amp`, `--amp` of eval, predict and suggest): what `auto` means on
this device, the dtype of each mode and its autocast context. Weights, optimiser state, the EMA teacher, the
Semantic Memory, losses and confidences stay fp32 whatever the mode (METHODS.md 5, "Precision follows the hardware")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # keys: config.AMP_MODES less auto
NAMES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}  # how the log names a mode
# torch's own probes (cpuinfo) of the instructions that run bf16 products natively, with the /proc/cpuinfo flag
# that says the same where a torch build lacks the probe; AMX tiles come with AMX-BF16 on every CPU that has them
CPU_BF16 = (("AMX-BF16", "_is_amx_tile_supported", "amx_bf16"),
            ("AVX512-BF16", "_is_avx512_bf16_supported", "avx512_bf16"))


@dataclass(frozen=True)
class Precision:
    """A concrete mode (off, bf16 or fp16) and why it was chosen, for the run's first lines."""
    mode: str
    reason: str

    def line(self) -> str:
        """`precision: bf16 (auto: the CPU has AVX512-BF16)`: what the run's first line says."""
        return f"precision: {NAMES[self.mode]} ({self.reason})"


def _cpu_flags() -> set[str]:
    """The flags of /proc/cpuinfo's first processor (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


def cpu_bf16_units() -> str | None:
    """The name of this CPU's native bf16 instructions (AMX-BF16 or AVX512-BF16), None without any: there bf16
    products are emulated, several times slower than fp32."""
    flags = None
    for name, probe, flag in CPU_BF16:
        check = getattr(torch.cpu, probe, None)
        if check is None:
            flags = _cpu_flags() if flags is None else flags
        if (check() if check is not None else flag in flags):
            return name
    return None


def native_bf16(device: torch.device) -> str | None:
    """Why `device` runs bf16 natively, in words; None where it does not (the mode `auto` then leaves fp32)."""
    if device.type == "cuda":
        # without emulation: a GPU before Ampere reports bf16 through slow emulated kernels
        return "CUDA device with bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        units = cpu_bf16_units()
        return f"the CPU has {units}" if units else None
    return None


def resolve_amp(amp: str, device: torch.device, key: str = "train.amp", saved: str | None = None) -> Precision:
    """The concrete mode of `amp` on `device`: auto is bf16 where the device runs it natively, else off (fp32);
    with `saved` (the mode a resumed run started in) auto keeps that one, so the run continues exactly. A forced
    mode stays as given. `key` names the setting in the reason."""
    if amp != "auto":
        slow = amp == "bf16" and device.type == "cpu" and cpu_bf16_units() is None
        return Precision(amp, f"{key}={amp}" + ("; this CPU has no bf16 instructions, expect it slower than fp32"
                                                 if slow else ""))
    if saved is not None:
        return Precision(saved, f"auto: the run continues in the precision it started in ({key}={saved})")
    why = native_bf16(device)
    if why:
        return Precision("bf16", f"auto: {why}")
    return Precision("off", f"auto: no native bf16 on {device.type} "
                            f"({'no AMX-BF16 or AVX512-BF16' if device.type == 'cpu' else 'none reported'})")


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """The autocast context of a concrete mode `amp` on `device`; a disabled one for "off"."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"precision {amp!r} is not a concrete mode: resolve it with resolve_amp first")
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
