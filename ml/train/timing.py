"""The machine a figure was measured on, and a plain timing loop.

Training records the CPU it ran on beside its minutes; quantisation times the float and int8 files before it
chooses one; ``ml.study.bench`` prints both. Speed depends on the CPU's vector instruction sets far more than on
small model changes, so they are named with every figure.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

# Vector instruction sets that decide how fast float and int8 convolutions run on an x86 CPU.
INSTRUCTION_SETS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The CPU the figures are measured on: its model, core count and which of ``INSTRUCTION_SETS`` it has
    (read from ``cpuinfo`` on Linux; elsewhere the model as Python names it and no instruction sets)."""
    model, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "instruction_sets": [name for name in INSTRUCTION_SETS if name in flags],
    }


def timings(fn, batch: np.ndarray, repeats: int, warmup: int = 3) -> np.ndarray:
    for _ in range(warmup):
        fn(batch)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(batch)
        out.append(time.perf_counter() - start)
    return np.asarray(out)
