"""
When replication flushes: the pure part of the modes.
"""

from __future__ import annotations

from typing import Optional, Tuple

from appliance.config import ClusterSettings


def batch_limits(settings: ClusterSettings, minute_of_day: int) -> Optional[Tuple[int, float]]:
    """
    C{(count, interval)} when updates should wait in a boxcar now, or
    C{None} to send them at the end of the current reactor turn (group
    commit).  In C{batched} mode with time-of-day windows, batching applies
    only inside a window.
    """
    if settings.replication != "batched":
        return None
    if not settings.batch_windows:
        return settings.batch_count, settings.batch_interval
    for window in settings.batch_windows:
        if window.covers(minute_of_day):
            return window.count, window.interval
    return None
