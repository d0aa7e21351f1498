"""
The persistent-connection client: L{Client} and L{RemoteSession} (the
Deferred API, for Twisted programs) and L{BlockingClient} (for ordinary
scripts).  See the README's section "The persistent client".
"""

from appliance.client.client import Client, RemoteSession, parse_address
from appliance.client.errors import (
    CallRefused,
    CallTimeout,
    ClientError,
    LoginRefused,
    NotServed,
    OutcomeUnknown,
    ServiceFailed,
    Unavailable,
    UnknownSession,
)

__all__ = [
    "Client",
    "RemoteSession",
    "parse_address",
    "CallRefused",
    "CallTimeout",
    "ClientError",
    "LoginRefused",
    "NotServed",
    "OutcomeUnknown",
    "ServiceFailed",
    "Unavailable",
    "UnknownSession",
]
