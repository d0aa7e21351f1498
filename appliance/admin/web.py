"""
What every admin resource answers with: JSON documents and refusals.
"""

from __future__ import annotations

import json
from typing import Optional

from twisted.logger import Logger
from twisted.web import resource

log = Logger()


def json_body(request, document, code: Optional[int] = 200) -> bytes:
    """
    C{document} as the JSON answer, with C{code} (C{None}: the code set
    already).
    """
    if code is not None:
        request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, sort_keys=True).encode("utf-8") + b"\n"


class Refused(resource.Resource):
    """
    An answer of C{code} with a one-line JSON reason (and the basic-auth
    challenge a browser understands on 401).
    """

    isLeaf = True

    def __init__(self, code: int, reason: str):
        super().__init__()
        self.code = code
        self.reason = reason

    def render(self, request) -> bytes:
        if self.code == 401:
            request.setHeader(b"www-authenticate", b'Basic realm="appliance admin"')
        return json_body(request, {"error": self.reason}, self.code)


def answer_later(request, d) -> None:
    """
    Write the document C{d} fires with, with the code set by then (a JSON
    error 500 if it fails), unless the client has gone.
    """
    gone = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def send(body: bytes) -> None:
        if not gone:
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()

    def failed(failure):
        log.failure("an admin answer failed", failure)
        send(json_body(request, {"error": failure.getErrorMessage()}, 500))

    def write(document):
        send(json_body(request, document, None))

    d.addCallbacks(write, failed)
