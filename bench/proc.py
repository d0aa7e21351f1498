"""
Process measurements the benchmarks share.
"""

from __future__ import annotations

import os
from typing import Optional


def cpu_seconds(pid: Optional[int]) -> float:
    """
    User + system CPU time of process C{pid} so far (from /proc), 0 when
    unknown or when there is no process.
    """
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """
    Resident set size of process C{pid} in KiB (from /proc).
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for {pid}")
