"""
Banana, the byte format under PB, parsed by position; and a client broker
that sends chunked calls without jelly.

Twisted's parser (L{twisted.spread.banana.Banana.dataReceived}) copies the
rest of its buffer once per token and joins every chunk that arrives while
a large string is incomplete onto what it holds: a batch of a few dozen
tokens and tens of kilobytes is copied dozens of times, and a string that
crosses reads is copied again per read.  This one walks the buffer by
position, slices each string once, and keeps the chunks of an incomplete
token in a list until they hold the bytes it needs.

It accepts and refuses exactly what Twisted's parser does, with the same
limits: at most C{prefixLimit} bytes of length prefix, strings and lists of
at most L{SIZE_LIMIT}, the known type bytes only, vocabulary only in the
C{pb} dialect (every refusal a L{banana.BananaError}; Twisted's parser
says "not implemented" to the last two); lists go onto C{listStack}, so a
nesting guard there (see L{appliance.replication.guard}) still applies.  A breach raises, as there,
and what was buffered is dropped: the connection is to be closed (Twisted
closes one whose protocol raised; the guard refuses it).  An empty chunk is
no data (Twisted's parser fails an assertion on one).

L{ClientBroker} writes a call whose one argument is a list of byte strings
(every replication call, see L{appliance.replication.wire.split}) straight
into Banana, the very bytes C{callRemote} would send after jelly and
Banana's encoder, and hands an answer that is a byte string over without
unjelly; any other call or answer takes PB's own path.  L{PlainCalls}
does the same on the receiving side: such arguments, and an answer that is
a byte string, skip jelly's (un)serialiser, which would return them as
they are.
"""

from __future__ import annotations

import struct
from typing import List, Optional

from twisted.internet import defer
from twisted.spread import banana, pb

SIZE_LIMIT = banana.SIZE_LIMIT

_LIST, _INT, _STRING, _NEG, _FLOAT, _LONGINT, _LONGNEG, _VOCAB = range(0x80, 0x88)
_DOUBLE = struct.Struct("!d")


class PositionParser:
    """
    Mixed into a L{banana.Banana} subclass (before it) to replace its
    C{dataReceived}; received items go through C{callExpressionReceived}
    like Twisted's.
    """

    #: Chunks of an incomplete token (the first starts with it), or None.
    _pending: Optional[List[bytes]] = None
    _pending_size = 0
    #: How many bytes the pending token needs before it can be parsed.
    _need = 0

    def dataReceived(self, chunk: bytes) -> None:
        if not chunk:
            return
        pending = self._pending
        if pending is not None:
            pending.append(chunk)
            self._pending_size += len(chunk)
            if self._pending_size < self._need:
                return
            self._pending = None
            chunk = b"".join(pending)
        self._parse(chunk)

    def _wait(self, buffer: bytes, start: int, need: int) -> None:
        """
        Keep C{buffer[start:]} until there are C{need} bytes from there.
        """
        rest = buffer[start:] if start else buffer
        self._pending = [rest]
        self._pending_size = len(rest)
        self._need = need

    def _parse(self, buffer: bytes) -> None:
        end = len(buffer)
        limit = self.prefixLimit
        stack = self.listStack
        pos = 0
        while pos < end:
            start = pos
            stop = pos + limit + 1
            if stop > end:
                stop = end
            while pos < stop and buffer[pos] < 0x80:
                pos += 1
            if pos == stop:
                if pos - start > limit:
                    raise banana.BananaError(f"Security precaution: more than {limit} bytes of prefix")
                self._wait(buffer, start, end - start + 1)
                return
            num = 0
            shift = 0
            for i in range(start, pos):
                num |= buffer[i] << shift
                shift += 7
            kind = buffer[pos]
            pos += 1
            if kind == _STRING:
                if num > SIZE_LIMIT:
                    raise banana.BananaError("Security precaution: String too long.")
                if end - pos < num:
                    self._wait(buffer, start, pos - start + num)
                    return
                item = buffer[pos : pos + num]
                pos += num
            elif kind == _LIST:
                if num > SIZE_LIMIT:
                    raise banana.BananaError("Security precaution: List too long.")
                stack.append((num, []))
                if num:
                    continue
                item = stack.pop()[1]
            elif kind == _INT or kind == _LONGINT:
                item = num
            elif kind == _NEG or kind == _LONGNEG:
                item = -num
            elif kind == _VOCAB:
                item = self.incomingVocabulary[num]
                if self.currentDialect != b"pb":
                    raise banana.BananaError(f"Invalid item for pb protocol {item!r}")
            elif kind == _FLOAT:
                if end - pos < 8:
                    self._wait(buffer, start, pos - start + 8)
                    return
                (item,) = _DOUBLE.unpack_from(buffer, pos)
                pos += 8
            else:
                raise banana.BananaError(f"Invalid Type Byte {bytes((kind,))!r}")
            # The item, and every list it completes.
            while stack:
                top = stack[-1]
                items = top[1]
                items.append(item)
                if len(items) != top[0]:
                    break
                item = stack.pop()[1]
            else:
                self.callExpressionReceived(item)


#: Banana's vocabulary is fixed (each broker copies the class's): a longer
#: string is never a word of it, and is not hashed to find out.
_LONGEST_WORD = max(len(word) for word in banana.Banana.outgoingVocabulary)


def _b128(n: int) -> bytes:
    if n == 0:
        return b"\x00"
    out = bytearray()
    while n:
        out.append(n & 0x7F)
        n >>= 7
    return bytes(out)


class PlainCalls(PositionParser):
    """
    Mixed into a L{pb.Broker} subclass (before it): L{PositionParser}, and
    no jelly for the arguments C{([bytes, ...],)}, C{{}} and for answers
    that are bytes, which jelly would pass through unchanged; anything
    else, or a broker with other security options, is jelly's.
    """

    def serialize(self, object, perspective=None, method=None, args=None, kw=None):
        if type(object) is bytes and self.security is pb.globalSecurity:
            return object
        return super().serialize(object, perspective, method, args, kw)

    def unserialize(self, sexp, perspective=None):
        if type(sexp) is list and self.security is pb.globalSecurity:
            if len(sexp) == 2 and sexp[0] == b"tuple":
                inner = sexp[1]
                if type(inner) is list and inner and inner[0] == b"list":
                    chunks = inner[1:]
                    if all(type(c) is bytes for c in chunks):
                        return (chunks,)
            elif len(sexp) == 1 and sexp[0] == b"dictionary":
                return {}
        return super().unserialize(sexp, perspective)


class ClientBroker(PlainCalls, pb.Broker):
    """
    The broker of a replication link's client side (see the module's
    docstring).
    """

    def _int(self, n: int) -> bytes:
        if n < self._smallestLongInt or n > self._largestLongInt:
            raise banana.BananaError(f"int is too large to send ({n})")
        if n < self._smallestInt:
            return _b128(-n) + banana.LONGNEG
        if n < 0:
            return _b128(-n) + banana.NEG
        return _b128(n) + (banana.INT if n <= self._largestInt else banana.LONGINT)

    def _put(self, out: List[bytes], data: bytes) -> None:
        if len(data) <= _LONGEST_WORD and self.currentDialect == b"pb" and data in self.outgoingSymbols:
            out.append(_b128(self.outgoingSymbols[data]) + banana.VOCAB)
        else:
            out.append(_b128(len(data)) + banana.STRING)
            out.append(data)

    def _sendMessage(self, prefix, perspective, objectID, message, args, kw):
        chunks = args[0] if len(args) == 1 else None
        if (
            kw
            or type(chunks) is not list
            or type(prefix) is not bytes
            or type(message) is not bytes
            or type(objectID) is not int
            or len(chunks) + 1 > SIZE_LIMIT
            or self.disconnected
            or self.security is not pb.globalSecurity
            or not all(type(c) is bytes and len(c) <= SIZE_LIMIT for c in chunks)
        ):
            return super()._sendMessage(prefix, perspective, objectID, message, args, kw)
        request = self.newRequestID()
        out = [b"\x07" + banana.LIST]
        put = self._put
        put(out, prefix + b"message")
        out.append(self._int(request))
        out.append(self._int(objectID))
        put(out, message)
        out.append(b"\x01" + banana.INT + b"\x02" + banana.LIST)
        put(out, b"tuple")
        out.append(_b128(len(chunks) + 1) + banana.LIST)
        put(out, b"list")
        for chunk in chunks:
            put(out, chunk)
        out.append(b"\x01" + banana.LIST)
        put(out, b"dictionary")
        answer = self.waitingForAnswers[request] = defer.Deferred()
        self.transport.write(b"".join(out))
        return answer

    def proto_answer(self, requestID, netResult):
        if type(netResult) is not bytes:
            return super().proto_answer(requestID, netResult)
        d = self.waitingForAnswers[requestID]
        del self.waitingForAnswers[requestID]
        d.callback(netResult)
