"""Mixed precision (`train.amp`, `allspark eval --amp`): the dtype of each mode and its autocast context."""
from __future__ import annotations

import torch

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # keys: config.AMP_MODES


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """The autocast context of mode `amp` on `device`; a disabled one for "off"."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
