"""What every benchmark prints about the machine it ran on: the CPU, and how busy it was (the
load average says whether other work shared the cores while the timings were taken)."""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """e.g. "Intel(R) Xeon(R) Processor (x86_64, 2 CPUs, avx512f)": the model and the features
    that decide fp32/bf16 speed, which differ between machines that look alike."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    features = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    arch = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    details = ", ".join([arch, *features])
    return f"{model} ({details})" if model else details


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, e.g. "0.52, 0.81, 1.02"."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())
