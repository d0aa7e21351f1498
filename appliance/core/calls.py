"""
Call records: what makes a retried call run at most once.

A client numbers its calls (a nonce of its own and a sequence number);
the session keeps the ids and results of its recent non-idempotent calls
under a reserved key, so the record is committed in the same change as
the call's effect and travels with it in the delta and in the full state.
A retry whose id is recorded gets the recorded result; a retry whose
record was dropped (too old: the session keeps only the last L{KEEP}) or
whose session is gone cannot be told apart from a call that never ran,
and is answered "outcome unknown".

Pure: values in, values out.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from attrs import frozen

#: Session keys under this prefix belong to the appliance, not the application.
RESERVED = "appliance."
#: The session key holding the call records.
CALLS = "appliance.calls"
#: The session key naming the client that created the session.
OWNER = "appliance.owner"
#: Records kept per session ...
KEEP = 32
#: ... and nonces whose dropped sequence numbers are remembered.
KEEP_NONCES = 16

NEW = "new"
DONE = "done"
LOST = "lost"


@frozen
class CallId:
    """
    One call's id: the caller's C{nonce} and its C{seq} (increasing per
    nonce).
    """

    nonce: str
    seq: int


def _parts(value: object) -> Tuple[List[list], Dict[str, int]]:
    """
    The records and the floors (in the order they were last raised: a
    list of pairs in the session, as JSON objects keep no order).
    """
    if not isinstance(value, dict):
        return [], {}
    done = value.get("done")
    floors = value.get("floors")
    return (done if isinstance(done, list) else []), dict(floors if isinstance(floors, list) else [])


def look(value: object, call: CallId) -> Tuple[str, Optional[str]]:
    """
    What the records C{value} (the session's C{CALLS} entry, or C{None})
    say of C{call}: C{(DONE, result)} with the recorded result text,
    C{(LOST, None)} when its record may have been dropped, or
    C{(NEW, None)}.
    """
    done, floors = _parts(value)
    for entry in done:
        if entry[0] == call.nonce and entry[1] == call.seq:
            return DONE, entry[2]
    floor = floors.get(call.nonce)
    if isinstance(floor, int) and call.seq <= floor:
        return LOST, None
    return NEW, None


def record(value: object, call: CallId, result: str, keep: int = KEEP) -> dict:
    """
    The records C{value} with C{call}'s C{result} added, the oldest
    dropped beyond C{keep} (their sequence numbers remembered as a floor
    per nonce, for the last L{KEEP_NONCES} nonces).
    """
    done, floors = _parts(value)
    done = done + [[call.nonce, call.seq, result]]
    while len(done) > keep:
        nonce, seq, _ = done.pop(0)
        floors[nonce] = max(seq, floors.pop(nonce, seq))
    while len(floors) > KEEP_NONCES:
        del floors[next(iter(floors))]
    return {"done": done, "floors": [[n, s] for n, s in floors.items()]}
