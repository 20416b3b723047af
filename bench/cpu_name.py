"""The CPU's model name for the machine line every bench script prints (/proc/cpuinfo, else platform's guess)."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        return name
