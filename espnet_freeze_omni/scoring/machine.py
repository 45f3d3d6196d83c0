"""What ran a benchmark: one line naming the device, printed and stored beside its figures
(timings from different machines are not comparable, so every benchmark says where it ran)."""
from __future__ import annotations

import os
import platform

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "cpu"
