"""
The replication wire format: a batch of records as one compact byte string.

PB's own serialisation costs tens of microseconds per dict; a fixed binary
layout costs a few.  Nothing here is pickled: every field is a length-checked
integer, float or UTF-8/ASCII string, and every value must parse as JSON, so
a malformed or hostile batch raises L{WireError} and is refused whole.

Banana refuses strings over 640 KiB, so a payload crosses PB as a list of
chunks (L{split} / L{join}).
"""

from __future__ import annotations

import enum
import json
import re
import struct
import sys
from typing import Collection, Iterable, List, Optional, Tuple

from appliance.core.session import MAX_FORMER, Delta, Full, Remove, Rotate, Touch
from appliance.core.store import Record, Result

FORMAT = 1
CHUNK = 512 * 1024
MAX_KEY = 1024
MAX_KEYS = 1_000_000

_DELTA, _FULL, _REMOVE, _TOUCH = 1, 2, 3, 4
# A session's id rotated; a full state that carries former ids (only a
# session that was rotated: others keep the plain full-state layout).
_ROTATE, _FULL_FORMER = 5, 6
_HEAD = struct.Struct("!B22sI")  # kind, sid, epoch
#: The kind of an encoded record, by its first byte (for the metrics).
RECORD_KINDS = ("", "delta", "full", "removal", "touch", "rotate", "full")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_TWO32 = struct.Struct("!II")
_TWOF = struct.Struct("!dd")
_DIGEST = struct.Struct("!22sQI")
_FORMER = struct.Struct("!22sd")  # a former id, seconds it stays dead
_SID = re.compile(rb"^[A-Za-z0-9_-]{22}$")
#: The characters a session id is made of, in the order digests are cut.
SID_CHARS = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
_RESULTS = {int(r): r for r in Result}


class WireError(ValueError):
    """
    A batch that does not follow the format; nothing of it is applied.
    """


def _name(out: List[bytes], name: Optional[str]) -> None:
    data = (name or "").encode("utf-8")
    out.append(_U8.pack(len(data)))
    out.append(data)


def _pairs(out: List[bytes], values) -> None:
    for key, data in values.items():
        k = key.encode("utf-8")
        out.append(_U16.pack(len(k)))
        out.append(k)
        out.append(_U32.pack(len(data)))
        out.append(data)


def encode_record(r: Record) -> bytes:
    """
    One record, to be joined into a batch with L{batch}.
    """
    out: List[bytes] = []
    sid = r.sid.encode("ascii")
    if isinstance(r, Delta):
        out.append(_HEAD.pack(_DELTA, sid, r.epoch))
        out.append(_U64.pack(r.version))
        _name(out, r.primary)
        _name(out, r.secondary)
        out.append(_TWO32.pack(len(r.set), len(r.removed)))
        _pairs(out, r.set)
        for key in r.removed:
            k = key.encode("utf-8")
            out.append(_U16.pack(len(k)))
            out.append(k)
    elif isinstance(r, Full):
        out.append(_HEAD.pack(_FULL_FORMER if r.former else _FULL, sid, r.epoch))
        out.append(_U64.pack(r.version))
        _name(out, r.primary)
        _name(out, r.secondary)
        out.append(_TWOF.pack(r.timeout, r.idle))
        out.append(_U32.pack(len(r.values)))
        _pairs(out, r.values)
        if r.former:
            out.append(_U32.pack(len(r.former)))
            out.extend(_FORMER.pack(old.encode("ascii"), left) for old, left in r.former)
    elif isinstance(r, Rotate):
        out.append(_HEAD.pack(_ROTATE, sid, r.epoch))
        out.append(r.old.encode("ascii"))
        out.append(_U64.pack(r.version))
        _name(out, r.primary)
        _name(out, r.secondary)
    elif isinstance(r, Remove):
        out.append(_HEAD.pack(_REMOVE, sid, r.epoch))
    elif isinstance(r, Touch):
        out.append(_HEAD.pack(_TOUCH, sid, r.epoch))
    else:
        raise TypeError(f"not a record: {r!r}")
    return b"".join(out)


_FORMAT_BYTE = _U8.pack(FORMAT)


def batch(encoded: Iterable[bytes]) -> bytes:
    return _FORMAT_BYTE + b"".join(encoded)


def encode(records: Iterable[Record]) -> bytes:
    return batch(encode_record(r) for r in records)


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def unpack(self, st: struct.Struct) -> tuple:
        pos = self.pos
        end = pos + st.size
        if end > len(self.data):
            raise WireError("truncated batch")
        self.pos = end
        return st.unpack_from(self.data, pos)

    def take(self, n: int) -> bytes:
        pos = self.pos
        end = pos + n
        if end > len(self.data):
            raise WireError("truncated batch")
        self.pos = end
        return self.data[pos:end]

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("a name or key is not UTF-8") from None

    def name(self, nodes: Collection[str]) -> Optional[str]:
        (n,) = self.unpack(_U8)
        if n == 0:
            return None
        name = self.text(n)
        if name not in nodes:
            raise WireError(f"unknown node {name!r}")
        return name

    def key(self) -> str:
        """
        Keys are interned: every backup copy of a session shares its key
        strings instead of holding one each.
        """
        (n,) = self.unpack(_U16)
        if n == 0 or n > MAX_KEY:
            raise WireError("bad key length")
        return sys.intern(self.text(n))

    def sid(self) -> str:
        data = self.take(22)
        if not _SID.match(data):
            raise WireError("malformed session id")
        return data.decode("ascii")

    def former(self) -> tuple:
        (count,) = self.unpack(_U32)
        if not 0 < count <= MAX_FORMER:
            raise WireError("bad count of former ids")
        out = []
        for _ in range(count):
            sid, left = self.unpack(_FORMER)
            if not _SID.match(sid) or not (0 < left < 1e9):
                raise WireError("malformed former id")
            out.append((sid.decode("ascii"), left))
        return tuple(out)

    def pairs(self, count: int) -> dict:
        if count > MAX_KEYS:
            raise WireError("too many keys")
        values = {}
        for _ in range(count):
            key = self.key()
            (n,) = self.unpack(_U32)
            data = self.take(n)
            try:
                json.loads(data)
            except ValueError:
                raise WireError(f"value of {key!r} is not JSON") from None
            except RecursionError:
                raise WireError(f"value of {key!r} is nested too deep") from None
            values[key] = data
        return values


def decode(data: bytes, nodes: Collection[str]) -> List[Record]:
    """
    Parse and validate a batch; C{nodes} are the names a record may carry.
    """
    if not isinstance(data, bytes):
        raise WireError("a batch is bytes")
    reader = _Reader(data)
    (fmt,) = reader.unpack(_U8)
    if fmt != FORMAT:
        raise WireError(f"unknown format {fmt}")
    records: List[Record] = []
    while reader.pos < len(data):
        kind, sid_bytes, epoch = reader.unpack(_HEAD)
        if not _SID.match(sid_bytes):
            raise WireError("malformed session id")
        sid = sid_bytes.decode("ascii")
        if kind == _DELTA:
            (version,) = reader.unpack(_U64)
            primary = reader.name(nodes)
            secondary = reader.name(nodes)
            nset, nremoved = reader.unpack(_TWO32)
            if primary is None or nremoved > MAX_KEYS:
                raise WireError("malformed delta")
            values = reader.pairs(nset)
            removed = tuple(reader.key() for _ in range(nremoved))
            records.append(Delta(sid, epoch, version, primary, secondary, values, removed))
        elif kind == _FULL or kind == _FULL_FORMER:
            (version,) = reader.unpack(_U64)
            primary = reader.name(nodes)
            secondary = reader.name(nodes)
            timeout, idle = reader.unpack(_TWOF)
            (count,) = reader.unpack(_U32)
            if primary is None or not (0 < timeout < 1e9) or not (0 <= idle < 1e9):
                raise WireError("malformed full state")
            values = reader.pairs(count)
            former = reader.former() if kind == _FULL_FORMER else ()
            records.append(Full(sid, epoch, version, primary, secondary, timeout, idle, values, former))
        elif kind == _ROTATE:
            old = reader.sid()
            (version,) = reader.unpack(_U64)
            primary = reader.name(nodes)
            secondary = reader.name(nodes)
            if primary is None or old == sid:
                raise WireError("malformed rotation")
            records.append(Rotate(sid, old, epoch, version, primary, secondary))
        elif kind == _REMOVE:
            records.append(Remove(sid, epoch))
        elif kind == _TOUCH:
            records.append(Touch(sid, epoch))
        else:
            raise WireError(f"unknown record kind {kind}")
    return records


def encode_results(results: Iterable[Result]) -> bytes:
    return bytes(int(r) for r in results)


def decode_results(data: object, count: int) -> List[Optional[Result]]:
    """
    One L{Result} per record of a batch of C{count}; C{None} for a code
    that is not one (that record's outcome is unknown, the others stand).
    An answer that does not match the batch raises L{WireError}.
    """
    if not isinstance(data, bytes) or len(data) != count:
        raise WireError("results do not match the batch")
    return [_RESULTS.get(b) for b in data]


class Take(enum.IntEnum):
    """
    A node's answer to one session a draining peer hands it.
    """

    #: It is primary now (epoch + 1) and its new secondary has the copy.
    TAKEN = 0
    #: It holds a newer copy: the offered one is stale.
    STALE = 1
    #: The session is busy here (or could not be taken now): offer it again.
    BUSY = 2


_TAKES = {int(t): t for t in Take}


def encode_takes(takes: Iterable[Take]) -> bytes:
    return bytes(int(t) for t in takes)


def decode_takes(data: object, count: int) -> List[Take]:
    if not isinstance(data, bytes) or len(data) != count or any(b not in _TAKES for b in data):
        raise WireError("take answers do not match the sessions offered")
    return [_TAKES[b] for b in data]


def valid_prefixes(prefixes: object) -> bool:
    """
    Whether C{prefixes} names which part of a digest this is: distinct
    first characters of session ids.
    """
    return (
        isinstance(prefixes, str)
        and 0 < len(prefixes) <= len(SID_CHARS)
        and len(set(prefixes)) == len(prefixes)
        and all(c in SID_CHARS for c in prefixes)
    )


def digest_parts(sizes: dict, part: int) -> List[str]:
    """
    The first characters of session ids grouped into parts of about
    C{part} digest entries each (C{sizes}: entries per first character),
    every character in one part, so that the parts cover every id.
    """
    parts: List[str] = []
    current, count = "", 0
    for c in SID_CHARS:
        n = sizes.get(c, 0)
        if current and count + n > part:
            parts.append(current)
            current, count = "", 0
        current += c
        count += n
    parts.append(current)
    return parts


def encode_digest(entries: Iterable[Tuple[str, int, int]]) -> bytes:
    return b"".join(_DIGEST.pack(sid.encode("ascii"), v, e) for sid, v, e in entries)


def decode_digest(data: bytes) -> List[Tuple[str, int, int]]:
    if not isinstance(data, bytes) or len(data) % _DIGEST.size:
        raise WireError("malformed digest")
    out = []
    for sid, version, epoch in _DIGEST.iter_unpack(data):
        if not _SID.match(sid):
            raise WireError("malformed session id")
        out.append((sid.decode("ascii"), version, epoch))
    return out


def split(payload: bytes, size: int = CHUNK) -> List[bytes]:
    """
    Chunks small enough for Banana.
    """
    return [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]


def join(chunks: object, limit: int) -> bytes:
    """
    Reassemble chunks received from a peer, refusing more than C{limit}
    bytes or anything that is not a list of byte strings.
    """
    if not isinstance(chunks, list) or not chunks:
        raise WireError("expected a list of byte strings")
    total = 0
    for chunk in chunks:
        if not isinstance(chunk, bytes):
            raise WireError("expected a list of byte strings")
        total += len(chunk)
        if total > limit:
            raise WireError(f"payload over {limit} bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_COPY = struct.Struct("!22sIQQ")  # sid, epoch, version, primary's incarnation


def encode_copies(copies: Iterable[Tuple[str, int, int, str, int]]) -> bytes:
    """
    The answer to a look-up of session copies: (sid, epoch, version,
    primary, primary's incarnation) per copy held.
    """
    out: List[bytes] = []
    for sid, epoch, version, primary, incarnation in copies:
        out.append(_COPY.pack(sid.encode("ascii"), epoch, version, incarnation))
        _name(out, primary)
    return b"".join(out)


def decode_copies(data: object, nodes: Collection[str]) -> List[Tuple[str, int, int, str, int]]:
    if not isinstance(data, bytes):
        raise WireError("malformed copy list")
    reader = _Reader(data)
    out = []
    while reader.pos < len(data):
        sid, epoch, version, incarnation = reader.unpack(_COPY)
        if not _SID.match(sid):
            raise WireError("malformed session id")
        primary = reader.name(nodes)
        if primary is None:
            raise WireError("a copy names its primary")
        out.append((sid.decode("ascii"), epoch, version, primary, incarnation))
    return out


def encode_sids(sids: Iterable[str]) -> bytes:
    return "".join(sids).encode("ascii")
