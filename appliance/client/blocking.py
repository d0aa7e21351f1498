"""
The blocking face of the client, for ordinary (non-Twisted) scripts.

    from appliance.client.blocking import BlockingClient

    with BlockingClient(["127.0.0.1:8891"], "demo", "demo-client-password") as client:
        cart = client.open()
        cart.call("cart", "add", "apple")
        print(cart.call("cart", "items"), cart.handle)

Twisted runs in a reactor thread of its own, started on first use (once
per process, as a daemon thread); every method waits for its answer at
most the client's C{failover_time} plus C{timeout} (then
L{CallTimeout}), and raises the same exceptions as the Deferred API.  The
program must not run the Twisted reactor itself.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Optional, Sequence, Tuple, Union

from twisted.internet import defer
from twisted.python.failure import Failure

from appliance.client.client import Client, RemoteSession, parse_address, resolve
from appliance.client.errors import CallTimeout

_started = threading.Lock()
_thread: Optional[threading.Thread] = None


def _reactor():
    """
    The global reactor, running in its own daemon thread.
    """
    global _thread
    from twisted.internet import reactor

    with _started:
        if _thread is None:
            if reactor.running:
                raise RuntimeError("the blocking client needs a reactor it runs itself; use appliance.client.Client")
            _thread = threading.Thread(
                target=reactor.run, kwargs={"installSignalHandlers": False}, name="appliance-client-reactor", daemon=True
            )
            _thread.start()
    return reactor


def _wait(reactor, bound: float, f, *args):
    """
    Run C{f(*args)} (which may return a Deferred) in the reactor thread;
    its result, or its exception raised here; L{CallTimeout} after
    C{bound} seconds.
    """
    box: "queue.Queue" = queue.Queue(1)

    def run():
        d = defer.maybeDeferred(f, *args)
        d.addBoth(box.put)

    reactor.callFromThread(run)
    try:
        result = box.get(timeout=bound)
    except queue.Empty:
        raise CallTimeout(f"no answer within {bound:g}s") from None
    if isinstance(result, Failure):
        result.raiseException()
    return result


Address = Union[str, Tuple[str, int]]


class BlockingClient:
    """
    L{Client}, blocking.  C{addresses} are C{"host:port"} strings or
    C{(host, port)} pairs of nodes' client ports; or give C{dns_name},
    C{port} and C{dns_server} (C{"host:port"} of the cluster's responder)
    to find the nodes by the cluster's name.  A context manager: leaving
    the C{with} block closes every connection.
    """

    def __init__(
        self,
        addresses: Sequence[Address] = (),
        name: str = "",
        password: str = "",
        timeout: float = 10.0,
        failover_time: float = 30.0,
        down_time: float = 5.0,
        dns_name: Optional[str] = None,
        port: Optional[int] = None,
        dns_server: Optional[str] = None,
    ):
        self.reactor = _reactor()
        self.bound = failover_time + timeout + 5.0
        seeds = [parse_address(a) if isinstance(a, str) else (a[0], int(a[1])) for a in addresses]
        if dns_name is not None:
            if port is None:
                raise ValueError("dns_name needs the nodes' client port")
            server = parse_address(dns_server) if dns_server else None
            seeds += self._wait(resolve, self.reactor, dns_name, port, server, timeout)
        if not seeds:
            raise ValueError("give addresses or dns_name")
        self.client = Client(self.reactor, seeds, name, password, timeout, failover_time, down_time)
        self._wait(self.client.connect)

    def _wait(self, f, *args):
        return _wait(self.reactor, self.bound, f, *args)

    @property
    def nodes(self):
        return dict(self.client.nodes)

    def open(self) -> "BlockingSession":
        """
        A new session.
        """
        return BlockingSession(self, self._wait(self.client.open))

    def attach(self, handle: str) -> "BlockingSession":
        """
        The session of C{handle} (its L{BlockingSession.handle}, or its
        HTTP cookie value).
        """
        return BlockingSession(self, self.client.attach(handle))

    def close(self) -> None:
        self._wait(self.client.close)

    def __enter__(self) -> "BlockingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BlockingSession:
    """
    L{RemoteSession}, blocking.
    """

    def __init__(self, client: BlockingClient, session: RemoteSession):
        self._client = client
        self.session = session

    @property
    def handle(self) -> str:
        return self.session.handle

    @property
    def sid(self) -> str:
        return self.session.sid

    @property
    def primary(self) -> Optional[str]:
        return self.session.primary

    @property
    def secondary(self) -> Optional[str]:
        return self.session.secondary

    def call(self, service: str, method: str, *args):
        return self._client._wait(self.session.call, service, method, *args)

    def get(self, key: str, default=None):
        return self._client._wait(self.session.get, key, default)

    def set(self, key: str, value) -> None:
        self._client._wait(self.session.set, key, value)

    def delete(self, key: str) -> bool:
        return self._client._wait(self.session.delete, key)

    def keys(self) -> Iterable[str]:
        return self._client._wait(self.session.keys)

    def end(self) -> bool:
        return self._client._wait(self.session.end)
