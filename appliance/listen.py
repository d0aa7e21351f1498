"""
Listening sockets that several processes share (C{processes = N}): each
process binds its own socket with C{SO_REUSEPORT} and the kernel spreads
new connections (and datagrams) over them by the sender's address.
"""

from __future__ import annotations

import socket

from twisted.internet.error import CannotListenError

from appliance.config import Address

# Twisted's own listenTCP default.
BACKLOG = 50


def _bound(address: Address, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, address.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise CannotListenError(address.host, address.port, e) from None
    return sock


def listen_tcp(reactor, address: Address, factory, reuse_port: bool):
    """
    C{reactor.listenTCP} on C{address}, or with C{reuse_port} a socket
    shared with the other processes of the same service.
    """
    if not reuse_port:
        return reactor.listenTCP(address.port, factory, interface=address.host)
    sock = _bound(address, socket.SOCK_STREAM)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        # The reactor keeps a duplicate of the descriptor.
        sock.close()


def listen_udp(reactor, address: Address, protocol, reuse_port: bool, max_packet_size: int):
    """
    C{reactor.listenUDP} on C{address}, or with C{reuse_port} a socket
    shared with the other processes of the same service.
    """
    if not reuse_port:
        return reactor.listenUDP(address.port, protocol, interface=address.host, maxPacketSize=max_packet_size)
    sock = _bound(address, socket.SOCK_DGRAM)
    try:
        return reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol, max_packet_size)
    finally:
        sock.close()
