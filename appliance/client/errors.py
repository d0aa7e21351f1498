"""
What a client of the appliance may be told.  These are L{pb.Error}s: the
nodes raise them and no traceback crosses the wire; the client raises each
as itself (see L{localize}).
"""

from __future__ import annotations

from twisted.spread import pb


class ClientError(pb.Error):
    """
    Base of everything the client library raises for a call.
    """


class UnknownSession(ClientError):
    """
    No session with this handle exists for this client (it never did,
    it ended or expired, or another client created it: all look alike).
    """


class OutcomeUnknown(ClientError):
    """
    A non-idempotent call was retried after a failure and its record
    cannot exist where it was retried (the session is gone, or the record
    is too old): it may or may not have run.  The client does not retry it.
    """


class NotServed(ClientError):
    """
    The node could not serve the session now and did nothing; the call
    may be sent elsewhere or again.
    """


class CallRefused(ClientError):
    """
    The call was malformed, too large, named an unknown service or
    method, or its result or arguments are not JSON values; nothing ran.
    """


class ServiceFailed(ClientError):
    """
    The service method raised; nothing it changed was kept.  The message
    names the exception's type and text.
    """


class LoginRefused(ClientError):
    """
    No node accepted the client's name and password.
    """


class Unavailable(ClientError):
    """
    No node could be reached (or served the call) within the client's
    time bound.
    """


class CallTimeout(Unavailable):
    """
    A call got no answer within its timeout on any node tried.
    """


#: Errors a node may answer with, raised on the client side as themselves.
REMOTE = (UnknownSession, OutcomeUnknown, NotServed, CallRefused, ServiceFailed)


def localize(failure):
    """
    An errback: one of L{REMOTE} raised on a node is raised here as itself
    (PB delivers a copy carrying only the name and text).
    """
    for kind in REMOTE:
        if failure.check(kind) and not isinstance(failure.value, kind):
            raise kind(failure.getErrorMessage())
    return failure
