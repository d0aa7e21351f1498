"""
The session record, the application's view of it, and the replication
records that carry its changes.

Values are stored as canonical JSON bytes per top-level key.  That makes a
delta the set of keys whose bytes changed, catches in-place mutation of
nested values (the working copy decodes a fresh object on first access and
re-encodes it at commit), and keeps memory close to the JSON size.

Nothing here does I/O or reads a clock: times are passed in.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Dict, Iterator, Optional, Tuple

#: The longest lifetime an application may give a session (the wire's limit).
MAX_TIMEOUT = 1e8
#: L{Changes.timeout} for "back to the cluster's default lifetime".
DEFAULT_TIMEOUT = 0.0
#: How many former ids a session carries (see L{Session.former}).
MAX_FORMER = 100

from attrs import define, field, frozen

_encoder = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, sort_keys=True, separators=(",", ":")
)


class NotJSON(TypeError):
    """
    A session value that JSON cannot carry.
    """


def encode_value(value: object) -> bytes:
    """
    Canonical JSON bytes of a session value: equal values give equal bytes.
    """
    try:
        return _encoder.encode(value).encode("ascii")
    except (TypeError, ValueError) as e:
        raise NotJSON(f"session values must be JSON-compatible: {e}") from None


def decode_value(data: bytes) -> object:
    return json.loads(data)


@define(slots=True, eq=False)
class Session:
    """
    One session as a node holds it, as primary or as backup.

    C{last_access} is on the holder's monotonic clock; C{size} is the sum of
    the value bytes, kept to enforce the size limit without recounting;
    C{primary_inc} is the incarnation of the primary this copy came from
    (see L{appliance.core.membership}); C{former} lists the ids this session
    had before it was given a new one, each with the moment (on the
    holder's clock) until which it must stay dead: every full state carries
    them, so whoever holds the session also refuses its old ids; C{due} is
    the expiry slot the store filed this copy under (0: none), see
    L{appliance.core.expiry}.
    """

    sid: str
    values: Dict[str, bytes]
    version: int
    epoch: int
    primary: str
    secondary: Optional[str]
    last_access: float
    timeout: float
    size: int = 0
    primary_inc: int = 0
    former: Tuple[Tuple[str, float], ...] = ()
    due: int = 0

    def expires_at(self) -> float:
        return self.last_access + self.timeout

    def full(self, now: float) -> "Full":
        return Full(
            sid=self.sid,
            epoch=self.epoch,
            version=self.version,
            primary=self.primary,
            secondary=self.secondary,
            timeout=self.timeout,
            idle=max(0.0, now - self.last_access),
            values=dict(self.values),
            former=tuple((sid, until - now) for sid, until in self.former if until > now) if self.former else (),
        )


@frozen
class Changes:
    """
    What one request did to a session: keys set (to their new JSON bytes)
    and keys removed, and its new idle lifetime in seconds (C{None}: as it
    was; L{DEFAULT_TIMEOUT}: the cluster's).  Empty when nothing changed.
    """

    set: Dict[str, bytes] = field(factory=dict)
    removed: Tuple[str, ...] = ()
    timeout: Optional[float] = None

    def __bool__(self) -> bool:
        return bool(self.set or self.removed or self.timeout is not None)


class SessionData(MutableMapping):
    """
    The mutable mapping an application sees.

    It reads through to the committed JSON bytes, decoding a key only when
    the application touches it, so a request pays for the keys it uses.
    """

    def __init__(
        self,
        values: Optional[Dict[str, bytes]] = None,
        timeout: Optional[float] = None,
        default_timeout: Optional[float] = None,
    ):
        self._base: Dict[str, bytes] = values if values is not None else {}
        self._cache: Dict[str, object] = {}
        self._removed: set = set()
        self.invalidated = False
        self.rotated = False
        #: Mark the session cookie C{Secure} even over plain HTTP.
        self.secure_cookie = False
        self._default = default_timeout
        self._timeout = default_timeout if timeout is None else timeout
        self._new_timeout: Optional[float] = None

    def __getitem__(self, key: str) -> object:
        try:
            return self._cache[key]
        except KeyError:
            pass
        if key in self._removed or key not in self._base:
            raise KeyError(key)
        value = self._cache[key] = decode_value(self._base[key])
        return value

    def __setitem__(self, key: str, value: object) -> None:
        if not isinstance(key, str):
            raise NotJSON("session keys must be strings")
        self._cache[key] = value
        self._removed.discard(key)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._cache.pop(key, None)
        if key in self._base:
            self._removed.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._cache or (key in self._base and key not in self._removed)

    def __iter__(self) -> Iterator[str]:
        for key in self._base:
            if key not in self._removed:
                yield key
        for key in self._cache:
            if key not in self._base:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def discard(self) -> None:
        """
        Forget what this request did: the session stays as it was.
        """
        self._cache.clear()
        self._removed.clear()
        self.invalidated = False
        self.rotated = False
        self._new_timeout = None

    def invalidate(self) -> None:
        """
        End the session (logout): both copies are removed.
        """
        self.invalidated = True

    def rotate(self) -> None:
        """
        Give the session a new id when this request commits, keeping its
        data (on login, on a change of privilege): the old id stops working
        on every server at once, and the response carries the new cookie.
        """
        self.rotated = True

    @property
    def timeout(self) -> Optional[float]:
        """
        Seconds the session lives once idle, as this request leaves it
        (C{None} only where the server did not say).  Set a number to
        change it, or C{None} for the cluster's default.
        """
        if self._new_timeout is None:
            return self._timeout
        return self._default if self._new_timeout == DEFAULT_TIMEOUT else self._new_timeout

    @timeout.setter
    def timeout(self, seconds: Optional[float]) -> None:
        if seconds is None:
            self._new_timeout = DEFAULT_TIMEOUT
            return
        seconds = float(seconds)
        if not 0 < seconds <= MAX_TIMEOUT:
            raise ValueError(f"a session lives more than 0 and at most {MAX_TIMEOUT:.0f} seconds, not {seconds}")
        self._new_timeout = seconds

    @property
    def stored(self) -> bool:
        """
        Whether the session held any value when the request opened it.
        """
        return bool(self._base)

    @property
    def default_timeout(self) -> Optional[float]:
        """
        The cluster's default lifetime, as the server said.
        """
        return self._default

    def changes(self) -> Changes:
        """
        The delta against the committed state, including values mutated in
        place; raises L{NotJSON} when a value cannot be stored.
        """
        changed = {}
        for key, value in self._cache.items():
            data = encode_value(value)
            if self._base.get(key) != data:
                changed[key] = data
        timeout = self._new_timeout
        if timeout is not None and self.timeout == self._timeout:
            timeout = None
        return Changes(changed, tuple(sorted(k for k in self._removed if k in self._base)), timeout)


@frozen
class Delta:
    """
    Keys set and removed between C{version - 1} and C{version}.
    """

    sid: str
    epoch: int
    version: int
    primary: str
    secondary: Optional[str]
    set: Dict[str, bytes]
    removed: Tuple[str, ...]


@frozen
class Full:
    """
    The whole state: sent when a backup has a gap, is new, or the primary
    changed.  C{idle} is seconds since last access, as clocks differ between
    machines.
    """

    sid: str
    epoch: int
    version: int
    primary: str
    secondary: Optional[str]
    timeout: float
    idle: float
    values: Dict[str, bytes]
    #: (former id, seconds it must stay dead): see L{Session.former}.
    former: Tuple[Tuple[str, float], ...] = ()


@frozen
class Remove:
    sid: str
    epoch: int


@frozen
class Touch:
    """
    The session was read: keep the backup from expiring.
    """

    sid: str
    epoch: int


@frozen
class Rotate:
    """
    The session C{old} is now called C{sid}, at the same epoch and version:
    the backup renames its copy and refuses C{old} from now on.  (Its
    C{sid} is the new id, so a gap or a lost link is answered, as for any
    record, with the full state of the session under its new id.)
    """

    sid: str
    old: str
    epoch: int
    version: int
    primary: str
    secondary: Optional[str]
