"""This process's resident memory, from /proc (Linux): now, at its peak, and the peak reset, so
that a measurement's peak is its own. No torch here: bench/prepare.py measures without it."""

from __future__ import annotations

from pathlib import Path


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process image. VmHWM, not getrusage's ru_maxrss: the latter
    survives exec, so a child would report the parent's peak."""
    return _status_mb("VmHWM")


def reset_peak_rss() -> None:
    """VmHWM back to the current RSS (Linux: writing 5 to clear_refs), so the next peak is the caller's."""
    Path("/proc/self/clear_refs").write_text("5")
