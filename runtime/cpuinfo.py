"""One reader of ``/proc/cpuinfo`` for the runtime, the bench and the exporter (CPU name for
reports and caches, instruction-set flags for the INT8 gate). Linux only: elsewhere every
field is None and callers fall back to what ``platform`` knows."""

from __future__ import annotations

from pathlib import Path


def cpuinfo_field(key: str) -> str | None:
    """The value of the first ``key : value`` line of /proc/cpuinfo, or None."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return None
