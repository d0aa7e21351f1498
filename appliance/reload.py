"""
Reload without restart: SIGHUP (or the admin listener's reload, which
calls the same L{Reloader.reload}) re-reads etc/cluster.ini and applies
the difference to the running process.

L{diff} is the pure part: the running and the edited configuration in,
the L{Changes} out, or the one-line L{ConfigError} that rejects the whole
edit (the running configuration stays).  What may change while running:

* session servers added or removed, ONE per reload: the servers and the
  witness balancers are the voters whose majority decides who may serve,
  and only a change of one voter keeps every old majority overlapping
  every new one (as in Raft's single-server change), so no two servers
  can own one session.  An edit that adds or removes two voters (session
  servers, or balancers with a witness) is refused: do one at a time.
  A removed server drains first (L{appliance.server.drain}) and exits;
  the others forget it once its link is down;
* balancers added or removed (their DNS answers follow), and the
  tunables in L{CLUSTER_LIVE}, L{BALANCER_LIVE} and L{DNS_LIVE}.

Anything else (a listening address, the secret, the cookie name, the
applications...) refuses the edit with a line naming the key and "restart
to change it".
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Tuple

import attrs
from attrs import frozen
from twisted.internet import defer
from twisted.logger import Logger

from appliance.config import ClusterConfig, ConfigError

log = Logger()

#: [cluster] keys a reload applies.
CLUSTER_LIVE = frozenset(("log_format", "access_log", "max_sessions", "drain_timeout"))
#: [balancer:NAME] keys a reload applies (new connections get them).
BALANCER_LIVE = frozenset((
    "policy", "retry_body_bytes", "max_body_bytes", "head_timeout", "idle_timeout", "body_timeout",
    "min_body_rate", "connect_timeout", "response_timeout", "health_rise", "health_fall", "down_time",
    "sticky_ttl", "forward_internal", "new_session_rate", "new_session_burst",
))
#: [dns] keys a reload applies.
DNS_LIVE = frozenset(("ttl", "rrl_rate", "rrl_slip", "check_interval"))

# The ini key of a config field where the two differ.
_KEYS = {"number": "id"}


@frozen
class Changes:
    """
    What a reload changed: session servers and balancers added and
    removed (by name) and the tunables, as C{[section] key}.
    """

    added: Tuple[str, ...] = ()
    removed: Tuple[str, ...] = ()
    balancers_added: Tuple[str, ...] = ()
    balancers_removed: Tuple[str, ...] = ()
    tunables: Tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return any((self.added, self.removed, self.balancers_added, self.balancers_removed, self.tunables))

    def as_dict(self) -> dict:
        """
        Plain data (for JSON).
        """
        return {f.name: list(getattr(self, f.name)) for f in attrs.fields(Changes)}

    def summary(self) -> str:
        parts = []
        for label, names in (
            ("servers added", self.added), ("servers removed", self.removed),
            ("balancers added", self.balancers_added), ("balancers removed", self.balancers_removed),
            ("tunables", self.tunables),
        ):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "; ".join(parts) or "nothing changed"


def _restart(path: str, section: str, key: Optional[str]) -> ConfigError:
    return ConfigError(path, section, key, "cannot change while running: restart to change it")


def _fields(old, new, section: str, live: Iterable[str], path: str) -> List[str]:
    """
    The live keys that differ between two values of one section; a fixed
    key that differs raises.
    """
    changed = []
    for f in attrs.fields(type(old)):
        if getattr(old, f.name) == getattr(new, f.name):
            continue
        key = _KEYS.get(f.name, f.name)
        if f.name not in live:
            raise _restart(path, section, key)
        changed.append(f"[{section}] {key}")
    return changed


def _sections(old: dict, new: dict, kind: str, path: str) -> None:
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            raise _restart(path, f"{kind}:{name}", None)


def diff(old: ClusterConfig, new: ClusterConfig) -> Changes:
    """
    What reloading C{new} over the running C{old} changes, or the
    L{ConfigError} (naming C{new}'s file, section and key) that refuses it.
    Pure: no I/O.
    """
    path = new.path
    tunables = _fields(old.cluster, new.cluster, "cluster", CLUSTER_LIVE, path)
    if (old.dns is None) != (new.dns is None):
        raise _restart(path, "dns", None)
    if old.dns is not None:
        tunables += _fields(old.dns, new.dns, "dns", DNS_LIVE, path)
    _sections({a.name: a for a in old.apps}, {a.name: a for a in new.apps}, "app", path)
    _sections({c.name: c for c in old.clients}, {c.name: c for c in new.clients}, "client", path)
    _sections({s.name: s for s in old.services}, {s.name: s for s in new.services}, "service", path)
    old_nodes, new_nodes = {n.name: n for n in old.nodes}, {n.name: n for n in new.nodes}
    for name in old_nodes.keys() & new_nodes.keys():
        _fields(old_nodes[name], new_nodes[name], f"node:{name}", (), path)
    old_lbs, new_lbs = {b.name: b for b in old.balancers}, {b.name: b for b in new.balancers}
    for name in sorted(old_lbs.keys() & new_lbs.keys()):
        tunables += _fields(old_lbs[name], new_lbs[name], f"balancer:{name}", BALANCER_LIVE, path)
    added = tuple(n for n in new_nodes if n not in old_nodes)
    removed = tuple(n for n in old_nodes if n not in new_nodes)
    lbs_added = tuple(b for b in new_lbs if b not in old_lbs)
    lbs_removed = tuple(b for b in old_lbs if b not in new_lbs)
    voters = [f"node:{n}" for n in added + removed] + [
        f"balancer:{b}" for b in lbs_added if new_lbs[b].witness is not None
    ] + [f"balancer:{b}" for b in lbs_removed if old_lbs[b].witness is not None]
    if len(voters) > 1:
        raise ConfigError(
            path, voters[1], None,
            f"adds or removes {len(voters)} voters at once ({', '.join(voters)}): add or remove one session server"
            " (or witness balancer) per reload, so that the old and the new majority overlap",
        )
    return Changes(added, removed, lbs_added, lbs_removed, tuple(tunables))


class Reloader:
    """
    Re-reads this process's configuration file and applies the edit:
    L{reload} is what SIGHUP runs and what the admin listener's reload
    calls.  C{load(path)} reads and checks a configuration (raising
    L{ConfigError}); C{apply(new, changes)} changes the running services
    (L{appliance.service.ProcessServices.reconfigure}).
    """

    def __init__(self, current: ClusterConfig, load: Callable[[str], ClusterConfig], apply: Callable[[ClusterConfig, Changes], None]):
        self.current = current
        self.load = load
        self.apply = apply

    def reload(self) -> defer.Deferred:
        """
        Fires with the L{Changes} applied, or fails with the L{ConfigError}
        that refused the edit (logged as one line; nothing changed).
        Reloads run one at a time, in the reactor thread.
        """
        try:
            new = self.load(self.current.path)
            changes = diff(self.current, new)
        except ConfigError as e:
            log.error("reload refused, the running configuration stays: {error}", error=str(e))
            return defer.fail(e)
        if changes:
            self.apply(new, changes)
        self.current = new
        log.info("reloaded {path}: {changes}", path=new.path, changes=changes.summary())
        return defer.succeed(changes)
