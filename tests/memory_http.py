"""
HTTP/1.1 exchanges with a twisted.web site in memory: raw request bytes in,
parsed responses out, no sockets and no reactor turns.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

Response = Tuple[int, Dict[bytes, List[bytes]], bytes]


def exchange(site, raw: bytes, port: int = 8081) -> bytes:
    """
    Feed C{raw} to a new connection of C{site}; return every byte written
    back by the time C{raw} has been handled.
    """
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", port), peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
    )
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    written = transport.value()
    channel.connectionLost(None)
    return written


def responses(data: bytes) -> List[Response]:
    """
    Split what a server wrote into (status, headers, body) for each
    Content-Length framed response (lower-cased header names).
    """
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response head: {data!r}")
        lines = head.split(b"\r\n")
        code = int(lines[0].split(b" ")[1])
        headers: Dict[bytes, List[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        length = int(headers.get(b"content-length", [b"0"])[0])
        if code == 100:
            length = 0
        out.append((code, headers, rest[:length]))
        data = rest[length:]
    return out


def request(method: str, path: str, body: bytes = b"", headers: Tuple[str, ...] = (), chunked: bool = False) -> bytes:
    """
    One HTTP/1.1 request, the body framed by Content-Length or, with
    C{chunked}, as chunks of up to 3 bytes.
    """
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 3]), body[i : i + 3]) for i in range(0, len(body), 3))
        payload = framed + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
