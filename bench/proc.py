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
