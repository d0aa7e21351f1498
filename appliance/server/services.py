"""
Stateful session services and the call path clients use.

A service is a class from C{[service:NAME] object = module:Class}, built
with a session's data; a client calls its public methods with JSON values
and gets a JSON value back.  A call goes through the node's request path
exactly like an HTTP request (L{SessionNode.open}: lock, lease check,
takeover; L{SessionNode.close}: commit, replicate, and in sync mode the
secondary's acknowledgement before the answer), so the same session may be
used from HTTP and from a client.  A non-idempotent call's result is
recorded in the session (L{appliance.core.calls}) in the same change as
its effect, so a retry after a failover returns the record instead of
running twice.

Services run in the reactor thread, under the session's lock: their
methods must not block.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Callable, Dict, Iterator, List, Mapping, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from appliance import cookie
from appliance.client.errors import CallRefused, OutcomeUnknown, ServiceFailed, UnknownSession
from appliance.config import ClusterConfig, ConfigError, ServiceConfig
from appliance.core import calls, identity
from appliance.core.calls import OWNER, RESERVED, CallId
from appliance.core.session import NotJSON, SessionData, encode_value
from appliance.server.hosting import load_object
from appliance.server.node import SessionNode

log = Logger()

#: The largest result (JSON bytes) a call may return.
MAX_RESULT = 256 * 1024

#: The name of the built-in service: get, set, delete, keys.
BUILTIN = ""


class ServiceData(MutableMapping):
    """
    A session's data as a service sees it: the appliance's own keys
    (L{RESERVED}) are neither shown nor writable.
    """

    def __init__(self, data: SessionData):
        self._data = data

    @staticmethod
    def _check(key) -> None:
        if not isinstance(key, str):
            raise CallRefused("session keys are strings")
        if key.startswith(RESERVED):
            raise CallRefused(f"keys starting with {RESERVED!r} belong to the appliance")

    def __getitem__(self, key):
        self._check(key)
        return self._data[key]

    def __setitem__(self, key, value) -> None:
        self._check(key)
        self._data[key] = value

    def __delitem__(self, key) -> None:
        self._check(key)
        del self._data[key]

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and not key.startswith(RESERVED) and key in self._data

    def __iter__(self) -> Iterator[str]:
        return (k for k in self._data if not k.startswith(RESERVED))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class SessionMethods:
    """
    The built-in service: the plain mapping operations.
    """

    def __init__(self, session: ServiceData):
        self.session = session

    def get(self, key, default=None):
        ServiceData._check(key)
        return self.session.get(key, default)

    def set(self, key, value):
        self.session[key] = value

    def delete(self, key):
        ServiceData._check(key)
        return self.session.pop(key, None) is not None

    def keys(self):
        return sorted(self.session)


class Services:
    """
    The registered services: C{find(service, method)} gives the method to
    run and whether it is idempotent.
    """

    def __init__(self, configs: Tuple[ServiceConfig, ...], load: Callable[[str], object] = load_object):
        self._methods: Dict[Tuple[str, str], Tuple[type, bool]] = {}
        builtin = [("get", True), ("keys", True), ("set", True), ("delete", True)]
        for name, idempotent in builtin:
            self._methods[(BUILTIN, name)] = (SessionMethods, idempotent)
        for config in configs:
            cls = load(config.object)
            for name in public_methods(cls):
                self._methods[(config.name, name)] = (cls, name in config.idempotent)

    @classmethod
    def checked(cls, cluster: ClusterConfig, load: Callable[[str], object] = load_object) -> "Services":
        """
        The services of C{cluster}; one whose object cannot be imported,
        is not a class with public methods, or declares an idempotent
        method it lacks raises L{ConfigError} naming its section and key.
        """
        for config in cluster.services:
            where = f"service:{config.name}"
            try:
                target = load(config.object)
            except Exception as e:
                problem = " ".join(str(e).split()) or "(no message)"
                raise ConfigError(cluster.path, where, "object", f"cannot import {config.object}: {type(e).__name__}: {problem}") from None
            if not isinstance(target, type) or not public_methods(target):
                raise ConfigError(cluster.path, where, "object", f"{config.object} is not a class with public methods")
            missing = [m for m in config.idempotent if m not in public_methods(target)]
            if missing:
                raise ConfigError(cluster.path, where, "idempotent", f"{config.object} has no method {missing[0]}")
        return cls(cluster.services, load)

    def find(self, service: str, method: str) -> Tuple[type, bool]:
        try:
            return self._methods[(service, method)]
        except KeyError:
            raise CallRefused(f"no method {method!r} in service {service!r}") from None


def public_methods(cls) -> List[str]:
    """
    The methods a client may call: callables defined by C{cls} (or its
    bases other than C{object}) whose names do not start with C{_}.
    """
    names = set()
    for base in cls.__mro__:
        if base is object:
            continue
        names.update(n for n, v in vars(base).items() if not n.startswith("_") and callable(v))
    return sorted(names)


def run(cls: type, method: str, data: SessionData, args: list):
    """
    Run C{method} of a C{cls} built over C{data}; its result as canonical
    JSON text.  Fails with L{ServiceFailed} (the method raised) or
    L{CallRefused} (a result that is not JSON, or too large).
    """
    try:
        result = getattr(cls(ServiceData(data)), method)(*args)
    except CallRefused:
        raise
    except Exception as e:
        raise ServiceFailed(f"{type(e).__name__}: {e}") from None
    try:
        text = encode_value(result).decode("ascii")
    except NotJSON as e:
        raise CallRefused(f"the result is not a JSON value: {e}") from None
    if len(text) > MAX_RESULT:
        raise CallRefused(f"the result is over {MAX_RESULT} bytes")
    return text


class SessionCalls:
    """
    The call path of one node's sessions for logged-in clients; every
    answer carries the summed identity of the session's pair.
    """

    def __init__(self, node: SessionNode, services: Services, ids: Mapping[str, int]):
        self.node = node
        self.services = services
        self.ids = dict(ids)

    def _identity(self, session) -> int:
        return identity.pair_sum(self.ids, session.primary, session.secondary)

    @defer.inlineCallbacks
    def open(self, owner: str):
        """
        A new session owned by C{owner}; fires with C{(sid, sum)} once
        it is stored (in sync mode, on its secondary too).
        """
        handle = yield self.node.open(cookie.NO_ROUTE)
        handle.data[OWNER] = owner
        yield self.node.close(handle)
        return handle.session.sid, self._identity(handle.session)

    @defer.inlineCallbacks
    def call(self, owner: str, sid: str, call: CallId, retry: bool, service: str, method: str, args: list):
        """
        Run C{service.method(*args)} on session C{sid} of C{owner}; fires
        with C{(result JSON text, sum)}.  C{retry}: the client sent this
        call before and does not know what became of it.
        """
        cls, idempotent = self.services.find(service, method)
        handle = yield self.node.open(cookie.Route(sid, None, None))
        if handle.session is None:
            raise self._unknown(sid, retry and not idempotent)
        answer = self._answer(handle, owner, call, retry, cls, method, args, idempotent)
        yield self.node.close(handle)
        if isinstance(answer, Exception):
            raise answer
        return answer, self._identity(handle.session)

    @staticmethod
    def _unknown(sid: str, ran_maybe: bool) -> Exception:
        """
        The answer for a session this client does not have (unknown, or
        another client's: the same words for both).
        """
        if ran_maybe:
            return OutcomeUnknown(f"session {sid} is not known here: the call may or may not have run")
        return UnknownSession(f"no session {sid}")

    def _answer(self, handle, owner, call, retry, cls, method, args, idempotent):
        """
        Under the session's lock: the result text of the call, or the
        exception to answer with.
        """
        if handle.data.get(OWNER) != owner:
            return self._unknown(handle.session.sid, retry and not idempotent)
        if idempotent:
            return self._run(handle, cls, method, args)
        key = calls.slot(call)
        if retry:
            state, recorded = calls.look(handle.data.get(key), call)
            if state == calls.DONE:
                return recorded
            if state == calls.LOST:
                return OutcomeUnknown(f"the record of call {call.seq} is no longer kept: it may or may not have run")
        result = self._run(handle, cls, method, args)
        if isinstance(result, str):
            handle.data[key] = calls.record(call, result)
        return result

    def _run(self, handle, cls, method, args):
        """
        The method's result text, or the exception to answer with (its
        changes are then dropped).
        """
        try:
            return run(cls, method, handle.data, args)
        except (ServiceFailed, CallRefused) as e:
            handle.data.discard()
            return e

    @defer.inlineCallbacks
    def end(self, owner: str, sid: str):
        """
        End session C{sid} of C{owner} on both copies; fires with C{True},
        or C{False} when there was no such session.
        """
        handle = yield self.node.open(cookie.Route(sid, None, None))
        if handle.session is None:
            return False
        mine = handle.data.get(OWNER) == owner
        if mine:
            handle.data.invalidate()
        yield self.node.close(handle)
        return mine
