"""
Where a chunked body ends, without decoding it.
"""

from __future__ import annotations


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
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or len(size_text) > 15:
                    raise ValueError("bad chunk size")
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ValueError("bad chunk size") from None
                if size_text.startswith((b"-", b"+", b"0x", b"0X")) or b"_" in size_text:
                    raise ValueError("bad chunk size")
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
                self.trailers += 1
                if self.trailers > 100:
                    raise ValueError("too many trailer lines")
        return -1
