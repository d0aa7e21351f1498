"""
Moving bytes between the client and server transports: sending without a
reactor turn when possible, and pausing one side while the other is full.
"""

from __future__ import annotations

from twisted.internet import tcp

from appliance import reactor


class Throttle:
    """
    A transport seen as a push producer that can be paused and resumed but
    not stopped: when the other side goes away the connection decides for
    itself what to do, instead of being closed by Twisted.
    """

    __slots__ = ("transport",)

    def __init__(self, transport):
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


def send_now(transport, data: bytes) -> None:
    """
    C{transport.write(data)}, but sent at once when nothing is queued.

    Twisted queues every write until the next reactor turn, which costs two
    C{epoll_ctl} calls and a dispatch per write; on the proxy's hot path
    (two writes per request) that was a large share of the CPU.  Only plain
    TCP transports are sent to directly (a TLS wrapper must encrypt), and
    anything left over or any error goes the ordinary way.
    """
    # Twisted empties dataBuffer once everything in it is sent; a buffer
    # left sent but not yet emptied only sends this the ordinary way.
    if (
        type(transport) in _TCP_TYPES
        and not transport.dataBuffer
        and not transport._tempDataLen
        and transport.connected
        and not transport.disconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


_TCP_TYPES = (tcp.Server, tcp.Client, reactor.Server, reactor.Client)
