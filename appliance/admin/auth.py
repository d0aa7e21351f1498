"""
Who may use an admin listener: pure checks of the request's method and
C{Authorization} header, no I/O.

With C{[cluster] admin_token} every request needs it, as C{Authorization:
Bearer TOKEN} or as the password of basic auth (any user name: a browser
asks for it once and sends it with every fetch of the status page).
Without a token the listener is on loopback only (the config refuses
anything else): reads are open to local users and every other method needs
the cluster secret, which the command line reads from the config.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Optional

from attrs import field, frozen

from appliance.config import ClusterConfig, is_loopback

#: The methods that only read.
READS = frozenset({b"GET", b"HEAD"})


def presented(authorization: Optional[bytes]) -> Optional[bytes]:
    """
    The credential an C{Authorization} header carries (a bearer token, or
    the password of basic auth), or C{None}.
    """
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        return rest.strip() or None
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(rest.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        user, colon, password = decoded.partition(b":")
        return password if colon else None
    return None


@frozen
class Guard:
    """
    C{token}: C{[cluster] admin_token}, or C{None}; C{secret}: the cluster
    secret, the credential of non-read requests when no token is set.
    """

    token: Optional[bytes] = field(repr=False)
    secret: bytes = field(repr=False)

    @classmethod
    def of(cls, cluster: ClusterConfig) -> "Guard":
        token = cluster.cluster.admin_token
        return cls(token.encode("utf-8") if token is not None else None, cluster.cluster.secret.encode("utf-8"))

    @property
    def credential(self) -> bytes:
        """
        What a request must present for anything but an open read.
        """
        return self.token if self.token is not None else self.secret

    def allows(self, method: bytes, authorization: Optional[bytes]) -> bool:
        if self.token is None and method in READS:
            return True
        given = presented(authorization)
        return given is not None and hmac.compare_digest(given, self.credential)


def local_host(host: Optional[bytes]) -> bool:
    """
    Whether a C{Host} header names this machine by address or as
    C{localhost}: without a token, a page of another site that a DNS
    rebinding points at 127.0.0.1 must not read the open listener.
    """
    if not host:
        return False
    name = host.decode("ascii", "replace").strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    else:
        name = name.rpartition(":")[0] if name.count(":") == 1 else name
    return is_loopback(name)
