"""Peak memory of a stretch of work on the device it runs on: `max_memory_allocated` on a CUDA device, the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs) on the CPU, in MB above what was held at the start.

    peak = PeakMemory(device)
    ...  # a training step
    peak.read()  # MB, or None where the platform cannot tell (a CPU peak without Linux's /proc)
"""

from __future__ import annotations

from pathlib import Path

import torch


class PeakMemory:
    """From construction to `read()`: the most memory the work held beyond the start, in MB."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = rss_kb("VmRSS") if reset_rss_peak() else None

    def read(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return round((torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20, 1)
        if self.start is None:
            return None
        peak = rss_kb("VmHWM")
        return None if peak is None else round(max(0, peak - self.start) / 1024, 1)


def reset_rss_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux); False where that cannot be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_kb(field: str) -> int | None:
    """`VmRSS` (now) or `VmHWM` (peak) of this process from /proc/self/status, in kB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None
