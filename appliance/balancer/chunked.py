"""
Where a chunked body ends, without decoding it.

The body is relayed as it came, so the server behind must read the same
boundaries: anything a strict reader could take another way is refused (a
size with a sign, prefix or whitespace, control characters in an
extension, a trailer line that is not a header field, a bare CR or LF).
"""

from __future__ import annotations

import re

from .framing import FIELD_VALUE, _HEADER

# chunk-size (hex digits only: no sign, no 0x, no whitespace) and the
# extensions, whose text holds no control character but HTAB.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})(?:;" + FIELD_VALUE + rb")?\Z")


class ChunkedScanner:
    """
    Finds the end of a chunked body fed in pieces, counting its payload.

    L{feed} returns how many bytes of the data belong to the body, or C{-1}
    if all of it does and more is needed.  A malformed body raises
    L{ValueError}.
    """

    __slots__ = ("state", "remaining", "line", "size", "max_line", "trailers")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, max_line: int = 4096):
        self.state = self._SIZE
        self.remaining = 0
        self.line = b""
        self.size = 0
        self.max_line = max_line
        self.trailers = 0

    def feed(self, data: bytes) -> int:
        i, n = 0, len(data)
        while i < n:
            state = self.state
            if state == self._DATA:
                take = min(self.remaining, n - i)
                i += take
                self.remaining -= take
                if self.remaining == 0:
                    self.state = self._DATA_END
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                if len(self.line) > self.max_line:
                    raise ValueError("chunk line too long")
                return -1
            line = self.line + data[i:j]
            self.line = b""
            i = j + 1
            if len(line) > self.max_line or not line.endswith(b"\r"):
                raise ValueError("bad chunk line")
            line = line[:-1]
            if state == self._SIZE:
                m = _SIZE_LINE.match(line)
                if m is None:
                    raise ValueError("bad chunk size")
                size = int(m.group(1), 16)
                self.size += size
                if size == 0:
                    self.state = self._TRAILER
                else:
                    self.remaining = size
                    self.state = self._DATA
            elif state == self._DATA_END:
                if line:
                    raise ValueError("chunk data longer than its size")
                self.state = self._SIZE
            else:
                if not line:
                    return i
                if _HEADER.match(line) is None:
                    raise ValueError("bad trailer line")
                self.trailers += 1
                if self.trailers > 100:
                    raise ValueError("too many trailer lines")
        return -1
