"""What every benchmark prints about the machine it ran on: the CPU, and how busy it was (the
load average says whether other work shared the cores while the timings were taken)."""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """e.g. "x86_64, 2 CPUs"."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, e.g. "0.52, 0.81, 1.02"."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())
