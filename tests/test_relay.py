"""
The lab's delay relay does not hide a dead destination: once the destination
refuses a connection, the relay refuses too, until it listens again (real
sockets on loopback, in this process).
"""

from __future__ import annotations

from twisted.internet import defer, error, protocol, reactor, task
from twisted.trial.unittest import TestCase

from appliance.testing.relay import Route

from .helpers import free_ports


class _Attempt(protocol.ClientFactory):
    def __init__(self):
        self.done = defer.Deferred()

    def buildProtocol(self, addr):
        self.done.callback("accepted")
        p = protocol.Protocol()
        p.connectionMade = lambda: p.transport.loseConnection()
        return p

    def clientConnectionFailed(self, connector, reason):
        self.done.callback("refused" if reason.check(error.ConnectionRefusedError) else "failed")


def attempt(port):
    f = _Attempt()
    reactor.connectTCP("127.0.0.1", port, f, timeout=2)
    return f.done


class RelayRefusalTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_refuses_while_destination_refuses(self):
        """A relay whose destination refuses stops accepting, and accepts again once the destination listens."""
        listen, dest = free_ports(2)
        route = Route(reactor, ("127.0.0.1", listen), ("127.0.0.1", dest), lambda: 0.0)
        route.start()
        self.addCleanup(lambda: route.port.stopListening() if route.port else None)
        first = yield attempt(listen)
        self.assertEqual(first, "accepted")
        outcome = None
        for _ in range(40):
            outcome = yield attempt(listen)
            if outcome == "refused":
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(outcome, "refused")
        server = reactor.listenTCP(dest, protocol.Factory.forProtocol(protocol.Protocol), interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        for _ in range(40):
            outcome = yield attempt(listen)
            if outcome == "accepted":
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(outcome, "accepted")
