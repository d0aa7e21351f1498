"""
Call records: what makes a retried call run at most once.

A client numbers the calls of each session it holds (a nonce of its own
and a sequence number); the session keeps the results of its recent
non-idempotent calls under reserved keys, one per slot
(C{seq % KEEP}), so a record is committed in the same change as the
call's effect, travels with it in the delta and in the full state, and
costs one small key per call.  A retry whose record is in its slot gets
the recorded result; a retry whose slot holds a later call (the record
was overwritten: too old) or another caller's, or whose session is gone,
cannot be told from a call that never ran, and is answered "outcome
unknown".  A first attempt is never recorded yet, so only retries look.

Pure: values in, values out.
"""

from __future__ import annotations

from typing import Optional, Tuple

from attrs import frozen

#: Session keys under this prefix belong to the appliance, not the application.
RESERVED = "appliance."
#: The prefix of the call-record keys.
CALLS = "appliance.call."
#: The session key naming the client that created the session.
OWNER = "appliance.owner"
#: Records kept per session (slots).
KEEP = 32

NEW = "new"
DONE = "done"
LOST = "lost"


@frozen
class CallId:
    """
    One call's id: the caller's C{nonce} (one per session handle it
    holds) and its C{seq} (increasing per nonce).
    """

    nonce: str
    seq: int


def slot(call: CallId, keep: int = KEEP) -> str:
    """
    The session key that records C{call}.
    """
    return f"{CALLS}{call.seq % keep}"


def look(entry: object, call: CallId) -> Tuple[str, Optional[str]]:
    """
    What C{entry} (the value of C{slot(call)} in the session, or C{None})
    says of a retried C{call}: C{(DONE, result)} with the recorded result
    text, C{(LOST, None)} when its record may have been overwritten, or
    C{(NEW, None)} when the call surely did not commit here.
    """
    if not isinstance(entry, list) or len(entry) != 3:
        return NEW, None
    nonce, seq, result = entry
    if nonce == call.nonce:
        if seq == call.seq:
            return DONE, result
        if isinstance(seq, int) and seq < call.seq:
            return NEW, None
    return LOST, None


def record(call: CallId, result: str) -> list:
    """
    The value to store at C{slot(call)}.
    """
    return [call.nonce, call.seq, result]

