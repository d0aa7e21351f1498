"""
etc/cluster.ini in, frozen values out.

Every mistake raises L{ConfigError}, whose message is one line naming the
file, the section and the key, so that startup can stop with that line and no
traceback.  Unknown sections and keys are mistakes too: a typo must not be
silently ignored.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from typing import Callable, Dict, Iterator, Optional, Tuple

from attrs import field, frozen

from appliance.core import identity


class ConfigError(Exception):
    """
    A mistake in the configuration; C{str()} is the one line to show.
    """

    def __init__(self, path: str, section: str, key: Optional[str], problem: str):
        self.path = path
        self.section = section
        self.key = key
        self.problem = problem
        if section == "-":
            super().__init__(f"{path}: {problem}")
            return
        where = f"[{section}]" if key is None else f"[{section}] {key}"
        super().__init__(f"{path}: {where}: {problem}")


@frozen
class Address:
    """
    A host and port to listen on or connect to.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@frozen
class BatchWindow:
    """
    A time-of-day window (minutes since local midnight, end exclusive, may
    wrap past midnight) during which replication is batched.
    """

    start: int
    end: int
    count: int
    interval: float

    def covers(self, minute: int) -> bool:
        if self.start <= self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


@frozen
class ClusterSettings:
    name: str
    secret: str
    cookie: str = "APPSESSION"
    replication: str = "sync"
    batch_count: int = 100
    batch_interval: float = 10.0
    batch_windows: Tuple[BatchWindow, ...] = ()
    session_timeout: float = 1800.0
    reprotect: str = "eager"
    replication_timeout: float = 5.0
    digest_interval: float = 30.0
    heartbeat_interval: float = 0.25
    heartbeat_misses: int = 3
    lease_time: float = 1.5
    clock_drift: float = 0.01
    max_session_bytes: int = 16 * 1024 * 1024
    max_sessions: int = 100_000
    drain_timeout: float = 30.0
    rebalance_rate: float = 200.0
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_ca: Optional[str] = None
    access_log: bool = False
    log_format: str = "text"
    runtime: Optional[str] = None
    admin: Optional[Address] = None
    admin_token: Optional[str] = field(default=None, repr=False)
    metrics: bool = True

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def takeover_wait(self) -> float:
        """
        How long a request may wait for the death of a session's primary to
        be settled (a lease and a few heartbeats to ask).
        """
        return self.lease_time + 4 * self.heartbeat_interval

    @property
    def lock_wait(self) -> float:
        """
        How long a request may wait for its session's lock: the holder may
        be waiting for a replication answer or for a takeover to settle.
        """
        return self.replication_timeout + self.takeover_wait


@frozen
class DnsConfig:
    listen: Address
    zone: str
    ttl: int = 5
    node: Optional[str] = None
    check_interval: float = 2.0
    rrl_rate: int = 50
    rrl_slip: int = 2
    processes: int = 1
    admin: Optional[Address] = None


@frozen
class BalancerConfig:
    name: str
    listen: Address
    mode: str = "plugin"
    policy: str = "round_robin"
    node: Optional[str] = None
    witness: Optional[Address] = None
    https: Optional[Address] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    redirect_https: bool = False
    retry_body_bytes: int = 64 * 1024
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    head_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 20.0
    min_body_rate: int = 500
    connect_timeout: float = 2.0
    response_timeout: float = 30.0
    health_interval: float = 2.0
    health_rise: int = 2
    health_fall: int = 2
    down_time: float = 5.0
    sticky_ttl: float = 1800.0
    forward_internal: bool = False
    new_session_rate: float = 10.0
    new_session_burst: int = 100
    processes: int = 1
    admin: Optional[Address] = None


@frozen
class NodeConfig:
    name: str
    http: Address
    replication: Address
    machine: str
    rack: str
    site: str = "default"
    secondary: Tuple[str, ...] = ()
    client: Optional[Address] = None
    number: Optional[int] = None
    admin: Optional[Address] = None


@frozen
class AppConfig:
    name: str
    mount: str
    wsgi: Optional[str] = None
    resource: Optional[str] = None
    threads: bool = True
    commit_failed: bool = False


@frozen
class ClientCredential:
    """
    A program allowed to log in to the nodes' client ports (not a node:
    the cluster secret is never given to clients).
    """

    name: str
    password: str = field(repr=False)


@frozen
class ServiceConfig:
    """
    A stateful session service: C{object} is a class built with a
    session's data, whose public methods clients call; those named in
    C{idempotent} may run again on a retry, the others run at most once.
    """

    name: str
    object: str
    idempotent: Tuple[str, ...] = ()


@frozen
class ClusterConfig:
    path: str
    cluster: ClusterSettings
    dns: Optional[DnsConfig]
    balancers: Tuple[BalancerConfig, ...]
    nodes: Tuple[NodeConfig, ...]
    apps: Tuple[AppConfig, ...]
    clients: Tuple[ClientCredential, ...] = ()
    services: Tuple[ServiceConfig, ...] = ()
    _by_name: Dict[str, NodeConfig] = field(init=False, repr=False, eq=False)
    _ids: Dict[str, int] = field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.nodes})
        object.__setattr__(
            self,
            "_ids",
            {n.name: n.number if n.number is not None else identity.derived_id(self.cluster.secret, n.name) for n in self.nodes},
        )

    @property
    def node_ids(self) -> Dict[str, int]:
        """
        Every node's number for the summed identity (configured, or derived
        from the cluster secret and the node's name).
        """
        return dict(self._ids)

    def node(self, name: str) -> Optional[NodeConfig]:
        return self._by_name.get(name)

    @property
    def node_names(self) -> Tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def listeners(self) -> Iterator[Tuple[str, str, Address]]:
        """
        (section, key, address) of every address this cluster listens on.
        """
        if self.dns is not None:
            yield "dns", "listen", self.dns.listen
        for b in self.balancers:
            yield f"balancer:{b.name}", "listen", b.listen
            if b.witness is not None:
                yield f"balancer:{b.name}", "witness", b.witness
            if b.https is not None:
                yield f"balancer:{b.name}", "https", b.https
        for n in self.nodes:
            yield f"node:{n.name}", "http", n.http
            yield f"node:{n.name}", "replication", n.replication
            if n.client is not None:
                yield f"node:{n.name}", "client", n.client
        for section, address in self.admins():
            yield section, "admin", address

    def admins(self) -> Iterator[Tuple[str, Address]]:
        """
        (section, address) of every configured admin listener: C{cluster}
        (the all-in-one supervisor), C{dns}, C{balancer:NAME}, C{node:NAME}.
        """
        if self.cluster.admin is not None:
            yield "cluster", self.cluster.admin
        if self.dns is not None and self.dns.admin is not None:
            yield "dns", self.dns.admin
        for b in self.balancers:
            if b.admin is not None:
                yield f"balancer:{b.name}", b.admin
        for n in self.nodes:
            if n.admin is not None:
                yield f"node:{n.name}", n.admin

    def listen_error(self, host: str, port: int, problem: str) -> ConfigError:
        """
        The error to stop startup with when C{host}:C{port} cannot be
        listened on: it names the section and key of that address.
        """
        for section, key, address in self.listeners():
            if (address.host, address.port) == (host, port):
                return ConfigError(self.path, section, key, f"cannot listen on {address}: {problem}")
        return ConfigError(self.path, "-", None, f"cannot listen on {Address(host, port)}: {problem}")

    @property
    def witnesses(self) -> Tuple[BalancerConfig, ...]:
        """
        The balancers that vote (have a C{witness} address).
        """
        return tuple(b for b in self.balancers if b.witness is not None)

    @classmethod
    def from_string(cls, text: str, path: str = "<string>") -> "ClusterConfig":
        return _Loader(path).load(text)

    @classmethod
    def from_path(cls, path: str) -> "ClusterConfig":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(path, "-", None, f"cannot read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(path, "-", None, "not UTF-8 text") from None
        return cls.from_string(text, path)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_WINDOW = re.compile(
    r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s+count\s*=\s*(\S+)\s+interval\s*=\s*(\S+)$"
)


class _Section:
    """
    The keys of one section, each read at most once; the keys left over at
    the end are unknown and rejected.
    """

    def __init__(self, loader: "_Loader", name: str, items: Dict[str, str]):
        self.loader = loader
        self.name = name
        self.items = dict(items)

    def error(self, key: Optional[str], problem: str) -> ConfigError:
        return ConfigError(self.loader.path, self.name, key, problem)

    def _take(self, key: str, required: bool) -> Optional[str]:
        value = self.items.pop(key, None)
        if value is None:
            if required:
                raise self.error(key, "is required")
            return None
        value = value.strip()
        if value == "":
            raise self.error(key, "is empty")
        return value

    def get(self, key, convert: Callable = str, default=None, required=False):
        value = self._take(key, required)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as e:
            raise self.error(key, f"{e} (got {value!r})") from None

    def done(self) -> None:
        for key in sorted(self.items):
            raise self.error(key, "unknown key")


def _address(value: str) -> Address:
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", value) or re.match(
        r"^([^:\s]+):(\d+)$", value
    )
    if m is None:
        raise ValueError("expected host:port or [ipv6]:port")
    host, port = m.group(1), int(m.group(2))
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1-65535")
    if ":" in host:
        ipaddress.IPv6Address(host)
    return Address(host, port)


def _admin_address(value: str) -> Address:
    if value.isdigit():
        return _address(f"127.0.0.1:{value}")
    return _address(value)


def is_loopback(host: str) -> bool:
    """
    Whether C{host} surely names this machine only (a loopback address or
    C{localhost}); any other name might resolve elsewhere.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _duration(value: str) -> float:
    m = _DURATION.match(value)
    if m is None:
        raise ValueError("expected a duration such as 250ms, 10s, 30m or 2h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _positive_duration(value: str) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if n < 1:
        raise ValueError("must be at least 1")
    return n


def _size(value: str) -> int:
    m = re.match(r"^(\d+)\s*([KMG]i?B?)?$", value, re.IGNORECASE)
    if m is None:
        raise ValueError("expected a size such as 65536, 64KiB or 10MiB")
    unit = (m.group(2) or "").upper()[:1]
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[unit]


def _per_second(value: str) -> float:
    m = re.match(r"^(\d+(?:\.\d+)?)\s*(?:/\s*s)?$", value)
    if m is None:
        raise ValueError("expected a number per second such as 10 or 0.5/s (0: no limit)")
    return float(m.group(1))


def _moves_per_second(value: str) -> float:
    try:
        return _per_second(value)
    except ValueError:
        raise ValueError("expected sessions per second such as 200/s (0: no rebalancing)") from None


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes or no")


def _choice(*allowed: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if value not in allowed:
            raise ValueError("must be one of " + ", ".join(allowed))
        return value

    return convert


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("names are letters, digits, '.', '_' and '-'")
    return value


def _dns_name(value: str) -> str:
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or not all(
        re.match(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$", label) for label in labels
    ):
        raise ValueError("not a valid DNS name")
    return name


def _names(value: str) -> Tuple[str, ...]:
    return tuple(_name(v.strip()) for v in value.split(",") if v.strip())


def _windows(value: str) -> Tuple[BatchWindow, ...]:
    windows = []
    for part in value.split(","):
        m = _WINDOW.match(part.strip())
        if m is None:
            raise ValueError("expected HH:MM-HH:MM count=N interval=T[, ...]")
        h1, m1, h2, m2 = (int(m.group(i)) for i in range(1, 5))
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59:
            raise ValueError("hours are 00-24 and minutes 00-59")
        windows.append(
            BatchWindow(
                h1 * 60 + m1,
                h2 * 60 + m2,
                _count(m.group(5)),
                _positive_duration(m.group(6)),
            )
        )
    return tuple(windows)


def _import_path(value: str) -> str:
    if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$", value):
        raise ValueError("expected module.path:attribute")
    return value


class _Loader:
    def __init__(self, path: str):
        self.path = path
        self.listens: Dict[Tuple[str, int], Tuple[str, str]] = {}

    def claim(self, section: _Section, key: str, address: Optional[Address]) -> None:
        if address is None:
            return
        slot = (address.host, address.port)
        if slot in self.listens:
            other = self.listens[slot]
            raise section.error(
                key, f"{address} is already used by [{other[0]}] {other[1]}"
            )
        self.listens[slot] = (section.name, key)

    def admin(self, section: _Section) -> Optional[Address]:
        address = section.get("admin", _admin_address)
        self.claim(section, "admin", address)
        return address

    def load(self, text: str) -> ClusterConfig:
        parser = configparser.ConfigParser(
            interpolation=None,
            inline_comment_prefixes=(";", "#"),
            default_section="\x00unused",
            strict=True,
        )
        parser.optionxform = str  # type: ignore[assignment]
        try:
            parser.read_string(text, source=self.path)
        except configparser.DuplicateSectionError as e:
            raise ConfigError(self.path, e.section, None, "duplicate section") from None
        except configparser.DuplicateOptionError as e:
            raise ConfigError(self.path, e.section, e.option, "duplicate key") from None
        except configparser.MissingSectionHeaderError as e:
            raise ConfigError(
                self.path, "-", None, f"line {e.lineno}: text before any [section]"
            ) from None
        except configparser.ParsingError as e:
            line = e.errors[0][0] if e.errors else "?"
            raise ConfigError(self.path, "-", None, f"line {line}: cannot parse") from None

        sections = {name: _Section(self, name, parser[name]) for name in parser.sections()}
        if "cluster" not in sections:
            raise ConfigError(self.path, "cluster", None, "section is required")
        cluster = self.cluster(sections.pop("cluster"))
        dns = None
        if "dns" in sections:
            dns = self.dns(sections.pop("dns"), cluster)
        balancers, nodes, apps, clients, services = [], [], [], [], []
        for name, section in sections.items():
            kind, _, label = name.partition(":")
            if label and not _NAME.match(label):
                raise section.error(None, "section names are letters, digits, '.', '_' and '-'")
            if kind == "node" and label:
                nodes.append(self.node(section, label))
            elif kind == "balancer" and label:
                balancers.append(self.balancer(section, label))
            elif kind == "app" and label:
                apps.append(self.app(section, label))
            elif kind == "client" and label:
                clients.append(self.client(section, label, cluster))
            elif kind == "service" and label:
                services.append(self.service(section, label))
            else:
                raise section.error(
                    None,
                    "unknown section (expected cluster, dns, node:NAME, balancer:NAME, app:NAME,"
                    " client:NAME, service:NAME)",
                )
        if not nodes:
            raise ConfigError(self.path, "node:NAME", None, "at least one node is required")
        names = {n.name for n in nodes}
        for b in balancers:
            if b.witness is not None and b.name in names:
                raise ConfigError(
                    self.path, f"balancer:{b.name}", "witness", f"a witness needs a name no node has ([node:{b.name}] exists)"
                )
        for label, section_name in [(b.node, f"balancer:{b.name}") for b in balancers] + [
            (dns.node if dns else None, "dns")
        ]:
            if label is not None and label not in names:
                raise ConfigError(self.path, section_name, "node", f"no [node:{label}]")
        for n in nodes:
            for pinned in n.secondary:
                if pinned not in names or pinned == n.name:
                    raise ConfigError(
                        self.path, f"node:{n.name}", "secondary", f"{pinned!r} is not another node"
                    )
        mounts: Dict[str, str] = {}
        for a in apps:
            if a.mount in mounts:
                raise ConfigError(
                    self.path, f"app:{a.name}", "mount", f"{a.mount} is already [app:{mounts[a.mount]}]"
                )
            mounts[a.mount] = a.name
        config = ClusterConfig(
            self.path, cluster, dns, tuple(balancers), tuple(nodes), tuple(apps), tuple(clients), tuple(services)
        )
        if cluster.admin_token is None:
            for section_name, address in config.admins():
                if not is_loopback(address.host):
                    raise ConfigError(
                        self.path, section_name, "admin",
                        f"{address} is not a loopback address: set [cluster] admin_token to listen there",
                    )
        clash = identity.collision(config.node_ids)
        if clash is not None:
            first, second = (" + ".join(group) for group in clash)
            raise ConfigError(
                self.path, f"node:{clash[1][-1]}", "id",
                f"the summed identity of {second} equals that of {first}; give one of these nodes another id",
            )
        return config

    def cluster(self, s: _Section) -> ClusterSettings:
        cookie = s.get("cookie", default="APPSESSION")
        if not re.match(r"^[A-Za-z0-9_-]+$", cookie):
            raise s.error("cookie", "a cookie name is letters, digits, '_' and '-'")
        tls = {k: s.get(k) for k in ("tls_cert", "tls_key", "tls_ca")}
        if any(tls.values()) and not all(tls.values()):
            missing = [k for k, v in tls.items() if not v][0]
            raise s.error(missing, "TLS needs tls_cert, tls_key and tls_ca together")
        settings = ClusterSettings(
            name=s.get("name", _dns_name, required=True),
            secret=s.get("secret", required=True),
            cookie=cookie,
            replication=s.get("replication", _choice("sync", "async", "batched"), "sync"),
            batch_count=s.get("batch_count", _count, 100),
            batch_interval=s.get("batch_interval", _positive_duration, 10.0),
            batch_windows=s.get("batch_windows", _windows, ()),
            session_timeout=s.get("session_timeout", _positive_duration, 1800.0),
            reprotect=s.get("reprotect", _choice("eager", "lazy"), "eager"),
            replication_timeout=s.get("replication_timeout", _positive_duration, 5.0),
            digest_interval=s.get("digest_interval", _positive_duration, 30.0),
            heartbeat_interval=s.get("heartbeat_interval", _positive_duration, 0.25),
            heartbeat_misses=s.get("heartbeat_misses", _count, 3),
            lease_time=s.get("lease_time", _positive_duration, 1.5),
            clock_drift=s.get("clock_drift", _fraction, 0.01),
            max_session_bytes=s.get("max_session_bytes", _size, 16 * 1024 * 1024),
            max_sessions=s.get("max_sessions", _count, 100_000),
            drain_timeout=s.get("drain_timeout", _positive_duration, 30.0),
            rebalance_rate=s.get("rebalance_rate", _moves_per_second, 200.0),
            access_log=s.get("access_log", _boolean, False),
            log_format=s.get("log_format", _choice("text", "json"), "text"),
            runtime=s.get("runtime"),
            admin=self.admin(s),
            admin_token=s.get("admin_token"),
            metrics=s.get("metrics", _boolean, True),
            **tls,
        )
        if settings.admin_token is not None and len(settings.admin_token) < 16:
            raise s.error("admin_token", "must be at least 16 characters")
        if len(settings.secret) < 8:
            raise s.error("secret", "must be at least 8 characters")
        if settings.lease_time < 3 * settings.heartbeat_interval:
            raise s.error("lease_time", "must be at least 3 heartbeat intervals (renewals must get through in time)")
        s.done()
        return settings

    def dns(self, s: _Section, cluster: ClusterSettings) -> DnsConfig:
        listen = s.get("listen", _address, required=True)
        zone = s.get("zone", _dns_name, cluster.name)
        if cluster.name != zone and not cluster.name.endswith("." + zone):
            raise s.error("zone", f"{cluster.name} is not inside zone {zone}")
        self.claim(s, "listen", listen)
        config = DnsConfig(
            listen=listen,
            zone=zone,
            ttl=s.get("ttl", _ttl, 5),
            node=s.get("node", _name),
            check_interval=s.get("check_interval", _positive_duration, 2.0),
            rrl_rate=s.get("rrl_rate", _count, 50),
            rrl_slip=s.get("rrl_slip", _slip, 2),
            processes=s.get("processes", _count, 1),
            admin=self.admin(s),
        )
        s.done()
        return config

    def balancer(self, s: _Section, name: str) -> BalancerConfig:
        listen = s.get("listen", _address, required=True)
        self.claim(s, "listen", listen)
        witness = s.get("witness", _address)
        self.claim(s, "witness", witness)
        https = s.get("https", _address)
        self.claim(s, "https", https)
        cert, key = s.get("tls_cert"), s.get("tls_key")
        if https is not None and (cert is None or key is None):
            raise s.error("tls_cert" if cert is None else "tls_key", "https needs tls_cert and tls_key")
        if https is None and (cert or key):
            raise s.error("https", "tls_cert/tls_key given but no https address")
        config = BalancerConfig(
            name=name,
            listen=listen,
            mode=s.get("mode", _choice("plugin", "sticky"), "plugin"),
            policy=s.get("policy", _choice("round_robin", "least_requests", "fastest"), "round_robin"),
            node=s.get("node", _name),
            witness=witness,
            https=https,
            tls_cert=cert,
            tls_key=key,
            redirect_https=s.get("redirect_https", _boolean, False),
            retry_body_bytes=s.get("retry_body_bytes", _size, 64 * 1024),
            max_body_bytes=s.get("max_body_bytes", _size, 10 * 1024 * 1024),
            max_header_bytes=s.get("max_header_bytes", _size, 16 * 1024),
            max_headers=s.get("max_headers", _count, 100),
            head_timeout=s.get("head_timeout", _positive_duration, 10.0),
            idle_timeout=s.get("idle_timeout", _positive_duration, 60.0),
            body_timeout=s.get("body_timeout", _positive_duration, 20.0),
            min_body_rate=s.get("min_body_rate", _size, 500),
            connect_timeout=s.get("connect_timeout", _positive_duration, 2.0),
            response_timeout=s.get("response_timeout", _positive_duration, 30.0),
            health_interval=s.get("health_interval", _positive_duration, 2.0),
            health_rise=s.get("health_rise", _count, 2),
            health_fall=s.get("health_fall", _count, 2),
            down_time=s.get("down_time", _positive_duration, 5.0),
            sticky_ttl=s.get("sticky_ttl", _positive_duration, 1800.0),
            forward_internal=s.get("forward_internal", _boolean, False),
            new_session_rate=s.get("new_session_rate", _per_second, 10.0),
            new_session_burst=s.get("new_session_burst", _count, 100),
            processes=s.get("processes", _count, 1),
            admin=self.admin(s),
        )
        if config.redirect_https and https is None:
            raise s.error("redirect_https", "needs an https address")
        if config.processes > 1 and witness is not None:
            raise s.error("processes", "a witness is one voter: a balancer with a witness address runs as one process")
        if config.processes > 1 and config.mode == "sticky":
            raise s.error("processes", "sticky mode learns servers per process: it runs as one process")
        s.done()
        return config

    def node(self, s: _Section, name: str) -> NodeConfig:
        http = s.get("http", _address, required=True)
        self.claim(s, "http", http)
        replication = s.get("replication", _address, required=True)
        self.claim(s, "replication", replication)
        config = NodeConfig(
            name=name,
            http=http,
            replication=replication,
            machine=s.get("machine", _name, required=True),
            rack=s.get("rack", _name, required=True),
            site=s.get("site", _name, "default"),
            secondary=s.get("secondary", _names, ()),
            client=s.get("client", _address),
            number=s.get("id", _node_id),
            admin=self.admin(s),
        )
        self.claim(s, "client", config.client)
        s.done()
        return config

    def client(self, s: _Section, name: str, cluster: ClusterSettings) -> ClientCredential:
        password = s.get("password", required=True)
        if len(password) < 8:
            raise s.error("password", "must be at least 8 characters")
        if password == cluster.secret:
            raise s.error("password", "must not be the cluster secret (clients never get it)")
        s.done()
        return ClientCredential(name, password)

    def service(self, s: _Section, name: str) -> ServiceConfig:
        config = ServiceConfig(
            name=name,
            object=s.get("object", _import_path, required=True),
            idempotent=s.get("idempotent", _methods, ()),
        )
        s.done()
        return config

    def app(self, s: _Section, name: str) -> AppConfig:
        mount = s.get("mount", required=True)
        if mount != "/" and (not re.match(r"^(/[A-Za-z0-9._~-]+)+$", mount) or mount.startswith("/_appliance")):
            raise s.error("mount", "expected a path such as /cart (not under /_appliance), or / (the root page only)")
        wsgi = s.get("wsgi", _import_path)
        resource = s.get("resource", _import_path)
        if (wsgi is None) == (resource is None):
            raise s.error("wsgi", "give exactly one of wsgi = module:app or resource = module:resource")
        threads = s.get("threads", _boolean)
        if resource is not None and threads:
            raise s.error("threads", "twisted.web resources always render in the reactor thread (threads = yes cannot apply)")
        commit_failed = s.get("commit_failed", _boolean, False)
        s.done()
        return AppConfig(
            name=name,
            mount=mount,
            wsgi=wsgi,
            resource=resource,
            threads=resource is None and threads is not False,
            commit_failed=commit_failed,
        )


def _node_id(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if not 0 < n < identity.ID_LIMIT:
        raise ValueError(f"must be 1 to 2**{identity.ID_BITS}-1")
    return n


def _methods(value: str) -> Tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    for name in names:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_]{0,62}$", name):
            raise ValueError(f"{name!r} is not a method name (letters, digits, '_'; no leading '_')")
    return names


def _ttl(value: str) -> int:
    n = int(value)
    if not 0 <= n <= 86400:
        raise ValueError("must be 0-86400 seconds")
    return n


def _fraction(value: str) -> float:
    text = value[:-1] if value.endswith("%") else value
    try:
        number = float(text)
    except ValueError:
        raise ValueError("expected a fraction such as 0.01 or 1%") from None
    if value.endswith("%"):
        number /= 100
    if not 0 <= number < 0.5:
        raise ValueError("must be from 0 to less than 50%")
    return number


def _slip(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError("must be 0 (never) or more")
    return n
