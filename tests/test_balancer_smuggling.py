"""
Request smuggling, as a table (issue 9, item 15): each variant is sent to
the real balancer protocol (fake transports), which forwards to a fake
session server answering 200 to every request it gets; the test asserts
the exact answers the client gets and the exact bytes the server received,
so nothing reaches a server framed any other way than the balancer read it.
"""

from __future__ import annotations

import re
from typing import List, NamedTuple

from twisted.trial.unittest import SynchronousTestCase

from .test_balancer_proxy import OK, Harness

CRLF = b"\r\n"
FWD = b"X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nForwarded: for=10.1.2.3;proto=http\r\n\r\n"


def req(*lines: bytes, body: bytes = b"") -> bytes:
    """A request as the client sends it: head lines, the blank line, C{body}."""
    return CRLF.join(lines) + CRLF + CRLF + body


def fwd(*lines: bytes, body: bytes = b"") -> bytes:
    """A request as the balancer forwards it: head lines, the forwarding headers, C{body}."""
    return CRLF.join(lines) + CRLF + FWD + body


POST = b"POST / HTTP/1.1"
HOST = b"Host: x"
TE = b"Transfer-Encoding: chunked"
CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"
SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"


class Case(NamedTuple):
    name: str
    request: bytes
    answers: List[int]
    received: bytes


def refused(name: str, request: bytes, status: int = 400) -> Case:
    return Case(name, request, [status], b"")


def chunked(name: str, body: bytes, status: int = 400) -> Case:
    """A chunked body whose framing the balancer refuses."""
    return refused(name, req(POST, HOST, TE, body=body), status)


CASES = [
    # CL.TE and TE.CL: both framings in one request.
    refused("CL.TE", req(POST, HOST, b"Content-Length: 6", TE, body=b"0\r\n\r\nG")),
    refused("TE.CL", req(POST, HOST, TE, b"Content-Length: 4", body=b"5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n")),
    refused("CL zero with TE", req(POST, HOST, b"Content-Length: 0", TE, body=CHUNKED)),
    refused("TE lower case with CL", req(POST, HOST, b"transfer-encoding: chunked", b"Content-Length: 3", body=b"abc")),
    refused("TE empty with CL", req(POST, HOST, b"Transfer-Encoding:", b"Content-Length: 3", body=b"abc")),
    refused("TE and CL, Connection naming TE", req(POST, HOST, b"Connection: te", TE, b"Content-Length: 3")),
    # TE.TE: obfuscated Transfer-Encoding.
    refused("TE xchunked", req(POST, HOST, b"Transfer-Encoding: xchunked", body=CHUNKED)),
    refused("TE space before colon", req(POST, HOST, b"Transfer-Encoding : chunked", body=CHUNKED)),
    refused("TE chunked then x", req(POST, HOST, TE, b"Transfer-Encoding: x", body=CHUNKED)),
    refused("TE chunked, identity", req(POST, HOST, b"Transfer-Encoding: chunked, identity", body=CHUNKED)),
    refused("TE identity, chunked", req(POST, HOST, b"Transfer-Encoding: identity, chunked", body=CHUNKED)),
    refused("TE gzip, chunked", req(POST, HOST, b"Transfer-Encoding: gzip, chunked", body=CHUNKED)),
    refused("TE quoted", req(POST, HOST, b'Transfer-Encoding: "chunked"', body=CHUNKED)),
    refused("TE chunked twice", req(POST, HOST, TE, TE, body=CHUNKED)),
    refused("TE obs-fold", req(POST, HOST, b"Transfer-Encoding:", b" chunked", body=CHUNKED)),
    refused("TE after bare LF", req(POST, HOST + b"\nTransfer-Encoding: chunked", body=CHUNKED)),
    refused("TE with NUL", req(POST, HOST, b"Transfer-Encoding: chu\x00nked", body=CHUNKED)),
    refused("TE with vertical tab", req(POST, HOST, b"Transfer-Encoding:\x0bchunked", body=CHUNKED)),
    refused("TE on HTTP/1.0", req(b"POST / HTTP/1.0", TE, body=CHUNKED)),
    Case("TE with tab", req(POST, HOST, b"Transfer-Encoding:\tchunked", body=CHUNKED), [200], fwd(POST, HOST, TE, body=CHUNKED)),
    Case("TE upper case", req(POST, HOST, b"Transfer-Encoding: CHUNKED", body=CHUNKED), [200], fwd(POST, HOST, TE, body=CHUNKED)),
    Case("TE trailing space", req(POST, HOST, b"Transfer-Encoding: chunked ", body=CHUNKED), [200], fwd(POST, HOST, TE, body=CHUNKED)),
    Case(
        "Transfer_Encoding is another header",
        req(POST, HOST, b"Transfer_Encoding: chunked", b"Content-Length: 5", body=b"hello"),
        [200],
        fwd(POST, HOST, b"Transfer_Encoding: chunked", b"Content-Length: 5", body=b"hello"),
    ),
    # Content-Length forms.
    refused("CL plus sign", req(POST, HOST, b"Content-Length: +5", body=b"hello")),
    refused("CL minus sign", req(POST, HOST, b"Content-Length: -5", body=b"hello")),
    refused("CL list of equal values", req(POST, HOST, b"Content-Length: 5, 5", body=b"hello")),
    refused("CL list of values", req(POST, HOST, b"Content-Length: 5,6", body=b"hello")),
    refused("CL twice, equal", req(POST, HOST, b"Content-Length: 5", b"Content-Length: 5", body=b"hello")),
    refused("CL twice, different", req(POST, HOST, b"Content-Length: 5", b"Content-Length: 6", body=b"hello!")),
    refused("CL twice, apart", req(POST, b"Content-Length: 5", HOST, b"content-length: 5", body=b"hello")),
    refused("CL hex", req(POST, HOST, b"Content-Length: 0x5", body=b"hello")),
    refused("CL exponent", req(POST, HOST, b"Content-Length: 5e0", body=b"hello")),
    refused("CL empty", req(POST, HOST, b"Content-Length:", body=b"hello")),
    refused("CL with inner space", req(POST, HOST, b"Content-Length: 1 0", body=b"hello")),
    refused("CL underscore", req(POST, HOST, b"Content-Length: 1_0", body=b"hello")),
    refused("CL too many digits", req(POST, HOST, b"Content-Length: 99999999999999999999", body=b"hello")),
    refused("CL with NUL", req(POST, HOST, b"Content-Length: 5\x00", body=b"hello")),
    refused("CL vertical tab", req(POST, HOST, b"Content-Length:\x0b5", body=b"hello")),
    refused("CL fullwidth digit", req(POST, HOST, b"Content-Length: \xef\xbc\x95", body=b"hello")),
    refused("CL space before colon", req(POST, HOST, b"Content-Length : 5", body=b"hello")),
    refused("CL tab before colon", req(POST, HOST, b"Content-Length\t: 5", body=b"hello")),
    refused("CL folded", req(POST, HOST, b"Content-Length:", b" 5", body=b"hello")),
    refused("CL over max_body_bytes", req(POST, HOST, b"Content-Length: 20000000"), 413),
    refused("Connection lists Content-Length", req(POST, HOST, b"Connection: content-length", b"Content-Length: 5", body=b"hello")),
    Case("CL leading zero", req(POST, HOST, b"Content-Length: 05", body=b"hello"), [200], fwd(POST, HOST, b"Content-Length: 05", body=b"hello")),
    Case("CL with OWS", req(POST, HOST, b"Content-Length:\t5 ", body=b"hello"), [200], fwd(POST, HOST, b"Content-Length:\t5 ", body=b"hello")),
    Case(
        "CL body then a pipelined request",
        req(POST, HOST, b"Content-Length: 5", body=b"hello" + SMUGGLED),
        [200, 200],
        fwd(POST, HOST, b"Content-Length: 5", body=b"hello") + fwd(b"GET /admin HTTP/1.1", HOST),
    ),
    Case(
        "GET with a body",
        req(b"GET / HTTP/1.1", HOST, b"Content-Length: 5", body=b"hello"),
        [200],
        fwd(b"GET / HTTP/1.1", HOST, b"Content-Length: 5", body=b"hello"),
    ),
    # Header lines, whitespace, obs-fold, bare CR and LF, NUL.
    refused("space before first header", req(b"GET / HTTP/1.1", b" Host: x")),
    refused("folded value", req(b"GET / HTTP/1.1", HOST, b"X: a", b" b")),
    refused("folded with tab", req(b"GET / HTTP/1.1", HOST, b"X: a", b"\tb")),
    refused("space in a name", req(b"GET / HTTP/1.1", HOST, b"X Y: z")),
    refused("empty name", req(b"GET / HTTP/1.1", HOST, b": z")),
    refused("line without colon", req(b"GET / HTTP/1.1", HOST, b"Xyz")),
    refused("bare LF line ends", b"GET / HTTP/1.1\nHost: x\n\n"),
    refused("bare LF before the blank line", b"GET / HTTP/1.1\r\nHost: x\n\r\n"),
    refused("bare CR in a value", req(b"GET / HTTP/1.1", HOST, b"X: a\rb")),
    refused("bare CR line end", b"GET / HTTP/1.1\rHost: x\r\n\r\n"),
    refused("CR CR LF", b"GET / HTTP/1.1\r\r\nHost: x\r\n\r\n"),
    refused("NUL in the target", req(b"GET /\x00 HTTP/1.1", HOST)),
    refused("NUL in a name", req(b"GET / HTTP/1.1", HOST, b"X\x00: a")),
    refused("NUL in a value", req(b"GET / HTTP/1.1", HOST, b"X: a\x00b")),
    refused("ESC in a value", req(b"GET / HTTP/1.1", HOST, b"X: a\x1bb")),
    refused("DEL in a value", req(b"GET / HTTP/1.1", HOST, b"X: a\x7fb")),
    refused("two Host lines", req(b"GET / HTTP/1.1", HOST, b"Host: y")),
    refused("no Host in HTTP/1.1", req(b"GET / HTTP/1.1", b"X: 1")),
    # The request line.
    refused("space before the method", req(b" GET / HTTP/1.1", HOST)),
    refused("two spaces", req(b"GET  / HTTP/1.1", HOST)),
    refused("extra word", req(b"GET / HTTP/1.1 x", HOST)),
    refused("HTTP/2.0 line", req(b"GET / HTTP/2.0", HOST)),
    refused("HTTP/1.2", req(b"GET / HTTP/1.2", HOST)),
    refused("lower-case protocol", req(b"GET / http/1.1", HOST)),
    refused("relative target", req(b"GET admin HTTP/1.1", HOST)),
    Case(
        "absolute form",
        req(b"GET http://y/admin HTTP/1.1", HOST),
        [200],
        fwd(b"GET /admin HTTP/1.1", b"Host: y"),
    ),
    Case(
        "HTTP/1.0 with keep-alive",
        req(b"POST / HTTP/1.0", b"Connection: keep-alive", b"Content-Length: 2", body=b"hi"),
        [200],
        CRLF.join([b"POST / HTTP/1.0", b"Content-Length: 2"]) + CRLF + FWD[:-2] + b"Connection: close\r\n\r\nhi",
    ),
    # Chunk sizes, extensions, trailers.
    chunked("chunk size 0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk size plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk size minus", b"-5\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk size leading space", b" 5\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk size trailing space", b"5 \r\nhello\r\n0\r\n\r\n"),
    chunked("chunk size underscore", b"0_5\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk size sixteen digits", b"0000000000000005\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk size bare LF", b"5\nhello\r\n0\r\n\r\n"),
    chunked("chunk size bare CR", b"5\r;x\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk extension with a control", b"5;a\x01b\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk longer than its size", b"3\r\nhello\r\n0\r\n\r\n"),
    chunked("chunk without its CRLF", b"5\r\nhelloX\r\n0\r\n\r\n"),
    chunked("last chunk, bad trailer", b"5\r\nhello\r\n0\r\nnot a header\r\n\r\n"),
    chunked("last chunk, folded trailer", b"5\r\nhello\r\n0\r\nX: 1\r\n continued\r\n\r\n"),
    chunked("chunk size over max_body_bytes", b"fffffffffffffff\r\n", 413),
    Case("chunked body", req(POST, HOST, TE, body=CHUNKED), [200], fwd(POST, HOST, TE, body=CHUNKED)),
    Case(
        "chunk extension",
        req(POST, HOST, TE, body=b"5;name=value\r\nhello\r\n0\r\n\r\n"),
        [200],
        fwd(POST, HOST, TE, body=b"5;name=value\r\nhello\r\n0\r\n\r\n"),
    ),
    Case(
        "upper-case hex and a trailer",
        req(POST, HOST, TE, body=b"A\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n"),
        [200],
        fwd(POST, HOST, TE, body=b"A\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n"),
    ),
    Case(
        "chunked body then a pipelined request",
        req(POST, HOST, TE, body=b"0\r\n\r\n" + SMUGGLED),
        [200, 200],
        fwd(POST, HOST, TE, body=b"0\r\n\r\n") + fwd(b"GET /admin HTTP/1.1", HOST),
    ),
    Case(
        "Connection names Transfer-Encoding",
        req(POST, HOST, b"Connection: transfer-encoding", TE, body=CHUNKED),
        [200],
        fwd(POST, HOST, TE, body=CHUNKED),
    ),
    # Expect and Upgrade.
    Case(
        "Expect: 100-continue",
        req(POST, HOST, b"Expect: 100-continue", b"Content-Length: 5", body=b"hello"),
        [100, 200],
        fwd(POST, HOST, b"Content-Length: 5", body=b"hello"),
    ),
    refused("unknown expectation", req(POST, HOST, b"Expect: magic", b"Content-Length: 5", body=b"hello"), 417),
    Case("Upgrade is not forwarded", req(b"GET / HTTP/1.1", HOST, b"Upgrade: h2c"), [200], fwd(b"GET / HTTP/1.1", HOST)),
]


class SmugglingTableTests(SynchronousTestCase):
    def exchange(self, request: bytes):
        """
        The statuses the client got and the bytes the servers received, in
        the order their connections were opened (each server answers 200 to
        each request it gets).
        """
        h = Harness(self)
        h.send(request)
        answered: List[int] = []
        for _ in range(10):
            while len(h.servers) < len(h.reactor.tcpClients):
                h.accept()
                answered.append(0)
            grown = [i for i, (_, _, t) in enumerate(h.servers) if len(t.value()) > answered[i]]
            if not grown:
                break
            for i in grown:
                port, server, transport = h.servers[i]
                answered[i] = len(transport.value())
                server.dataReceived(OK)
        answers = [int(code) for code in re.findall(rb"HTTP/1\.1 ([0-9]{3}) ", h.client.value())]
        return answers, b"".join(t.value() for _, _, t in h.servers)

    def test_table_is_large(self):
        """The table holds at least 60 variants, each named once."""
        self.assertGreaterEqual(len(CASES), 60)
        self.assertEqual(len({case.name for case in CASES}), len(CASES))

    def test_every_variant(self):
        """Each variant gets exactly its answers, and the server receives exactly the bytes listed (nothing for a refused one)."""
        for case in CASES:
            answers, received = self.exchange(case.request)
            self.assertEqual((answers, received), (case.answers, case.received), case.name)
