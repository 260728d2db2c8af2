"""Peak memory of the running process: /proc/self/status readings, the high-water-mark reset and
`PeakMeter`.

Method (see benchmarks/README.md):
  cuda  torch.cuda.max_memory_allocated() after torch.cuda.reset_peak_memory_stats(), minus the allocated
        bytes before the variant was built: every tensor the variant owns (weights, grads, optimizer
        states, activations) at its peak.
  cpu   each variant runs in a fresh subprocess (subprocs.py). Peak = the process's resident-set
        high-water mark (VmHWM, /proc/self/status) during the measured steps minus the RSS right after the
        imports (before any model is built). The high-water mark is reset just before the measured steps by
        writing "5" to /proc/self/clear_refs (Linux >= 4.0), so one-time build transients do not count;
        where that file is not writable the meter falls back to getrusage(RUSAGE_SELF).ru_maxrss (the peak
        since process start). RSS also holds allocator-cached free pages, so CPU peaks are an upper bound of
        the live tensor bytes.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

import torch


def proc_status_kb(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMeter:
    """begin() before the variant is built (after imports); arm() after warm-up; peak() after the steps."""

    def __init__(self, device: str):
        self.device = device

    def begin(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = proc_status_kb("VmRSS") * 1024

    def arm(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.method = "cuda.max_memory_allocated"
        else:
            self.method = "VmHWM (clear_refs reset)" if reset_hwm() else "ru_maxrss (since process start)"
        self.armed_at = self.current()

    def current(self) -> int:
        if self.device == "cuda":
            return torch.cuda.memory_allocated() - self.base
        return proc_status_kb("VmRSS") * 1024 - self.base

    def peak(self) -> int:
        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        if self.method.startswith("VmHWM"):
            return proc_status_kb("VmHWM") * 1024 - self.base
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base
