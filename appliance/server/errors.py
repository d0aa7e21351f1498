"""
What a session server's request path can fail with, beyond the session
rules' own L{appliance.core.store.Fenced} and L{appliance.core.store.TooLarge}.
"""

from __future__ import annotations


class NotServing(Exception):
    """
    This node did nothing with the request and cannot now: it lost its
    lease, the session is busy for too long, or the session's owner cannot
    be settled yet.  Nothing was changed, so the request may be sent to
    another server, even a POST.
    """


class Unprotected(Exception):
    """
    A change was made here but no second copy of it could be made, and
    this node may not keep a session with a single copy (other servers may
    be alive).  Whether the change survives is unknown to the client.
    """


class TooManySessions(Exception):
    """
    This node is primary of C{max_sessions} sessions: it creates no new one
    until some end.
    """
