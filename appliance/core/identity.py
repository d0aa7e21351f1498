"""
Summed identity: every node has a large number, and a reply names the
pair serving a session (primary and secondary) by the sum of theirs.  A
client that knows which node answered subtracts its number to learn the
secondary.  That works only while no two different pairs have the same
sum, which L{collision} checks at startup.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from itertools import combinations
from typing import Dict, Mapping, Optional, Tuple

#: Node numbers are 63-bit (positive in any signed 64-bit integer).
ID_BITS = 63
ID_LIMIT = 1 << ID_BITS


def derived_id(secret: str, name: str) -> int:
    """
    The number of node C{name}: an HMAC of its name under the cluster
    secret, so every node computes the same numbers and an outsider
    cannot tell them from the names alone.  Never zero (zero stands for
    "no secondary").
    """
    digest = hmac.new(secret.encode("utf-8"), b"appliance-node-id\x00" + name.encode("utf-8"), hashlib.sha256).digest()
    return (int.from_bytes(digest[:8], "big") % (ID_LIMIT - 1)) + 1


def pair_sum(ids: Mapping[str, int], primary: str, secondary: Optional[str]) -> int:
    """
    The number a reply carries for C{primary} backed by C{secondary}
    (C{None}: no second copy, the primary's number alone).
    """
    return ids[primary] + (ids[secondary] if secondary is not None else 0)


def secondary_of(ids: Mapping[str, int], primary: str, total: int) -> Tuple[bool, Optional[str]]:
    """
    What C{total} says about the secondary when C{primary} answered:
    C{(True, name)}, C{(True, None)} when there is no secondary, or
    C{(False, None)} when it names no node (a reply from another
    configuration, or not from C{primary}).
    """
    rest = total - ids.get(primary, total + 1)
    if rest == 0:
        return True, None
    for name, number in ids.items():
        if number == rest and name != primary:
            return True, name
    return False, None


def collision(ids: Mapping[str, int]) -> Optional[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
    """
    Two different pairs (or a lone primary and a pair) whose sums are
    equal, as two tuples of node names; C{None} when every sum is unique.
    Two nodes with the same number collide too (as lone primaries).
    """
    seen: Dict[int, Tuple[str, ...]] = {}
    names = sorted(ids)
    groups = [(n,) for n in names] + list(combinations(names, 2))
    for group in groups:
        total = sum(ids[n] for n in group)
        if total in seen:
            return seen[total], group
        seen[total] = group
    return None
