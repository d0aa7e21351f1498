"""
A lab of real hosts on one machine: each host a Linux network namespace with
its own address on a bridge that lives in a namespace of its own, every role
of the appliance a real C{twistd appliance} process in its host, and faults
that are silent, reversible and logged on the monotonic clock.

Hosts: C{s1}..C{sN} (session servers), C{lb} (the balancer), C{c1} (the
clients).  Nothing appears in the machine's own namespace: the veth pairs are
created inside the namespaces, and every namespace is deleted on L{Lab.stop}
(a lab also removes what a dead earlier run left behind).

Cuts drop packets on the receiving side (the host's own C{input} hook), so a
sender sees neither RST nor ICMP nor EPERM: its connection attempts time out,
as they do across a real partition.  Delay is added by a relay (see
L{appliance.testing.relay}) that every relayed connection goes through from
the start, so a delay also reaches connections that already exist.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from attrs import define, field, frozen

from appliance.runtime import child_environment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

PREFIX = "aplab"
NETWORK = "198.18.0.0/15"
LB_ADDRESS = "198.18.0.2"
CLIENT_ADDRESS = "198.18.0.3"
HTTP_PORT = 8080
REPLICATION_PORT = 8790
RELAY_BASE_PORT = 20000
RELAY_CONTROL_PORT = 19999
RELAY_GID = 3399
SECRET = "lab-secret-0123456789"
CLONE_NEWNET = 0x40000000

_instances = 0


class LabUnavailable(Exception):
    """
    The lab cannot run here; C{str()} is the one sentence saying why.
    """


@frozen
class Host:
    name: str
    address: str


@frozen
class Route:
    """
    Traffic of the appliance from host C{source} to C{port} on host
    C{destination}, which goes through C{source}'s relay on C{relay_port}.
    """

    source: str
    destination: str
    port: int
    relay_port: int


def server_names(servers: int) -> Tuple[str, ...]:
    return tuple(f"s{i}" for i in range(1, servers + 1))


def hosts_of(servers: int) -> Dict[str, Host]:
    hosts = {name: Host(name, f"198.18.0.{10 + i}") for i, name in enumerate(server_names(servers), 1)}
    hosts["lb"] = Host("lb", LB_ADDRESS)
    hosts["c1"] = Host("c1", CLIENT_ADDRESS)
    return hosts


def cluster_ini(servers: int, replication: str = "sync", settings: Optional[Dict[str, Dict[str, str]]] = None) -> str:
    """
    The lab's cluster.ini: every timing key at its shipped default, so the
    lab measures what users get.  C{settings} adds or overrides keys, by
    section name (C{{"cluster": {"batch_interval": "1s"}}}).

    Set here, and why: addresses (one host each), the secret (required), the
    balancer's witness address (as shipped: it votes on who is alive), the
    balancer's C{node = s1} (a balancer runs with C{--node s1 --roles
    balancer} in host C{lb}), one machine per server (so placement spreads
    secondaries), the demo cart without threads, as shipped.
    """
    hosts = hosts_of(servers)
    sections: Dict[str, Dict[str, str]] = {
        "cluster": {"name": "app.lab.test", "secret": SECRET, "cookie": "APPSESSION", "replication": replication},
        "balancer:lb1": {
            "listen": f"{LB_ADDRESS}:{HTTP_PORT}",
            "witness": f"{LB_ADDRESS}:{REPLICATION_PORT}",
            "node": "s1",
            "mode": "plugin",
        },
    }
    for i, name in enumerate(server_names(servers), 1):
        address = hosts[name].address
        sections[f"node:{name}"] = {
            "http": f"{address}:{HTTP_PORT}",
            "replication": f"{address}:{REPLICATION_PORT}",
            "machine": f"m{i}",
            "rack": "r1",
        }
    sections["app:cart"] = {"mount": "/cart", "wsgi": "appliance.demo.cart:app", "threads": "no"}
    for section, keys in (settings or {}).items():
        sections.setdefault(section, {}).update(keys)
    lines = ["; written by appliance.testing.lab"]
    for section, keys in sections.items():
        lines.append(f"\n[{section}]")
        lines.extend(f"{key} = {value}" for key, value in keys.items())
    return "\n".join(lines) + "\n"


def relay_routes(servers: int) -> List[Route]:
    """
    The traffic that goes through relays (and so can be delayed): the
    replication links between every two servers.

    The balancer's requests to the servers do not: a relay accepts every
    connection at once, so a balancer connecting to a dead server would see
    a connection that closes after its request went out instead of a refused
    one, and its failover would look worse than it is.
    """
    names = server_names(servers)
    routes = []
    for source in names:
        for n, destination in enumerate(d for d in names if d != source):
            routes.append(Route(source, destination, REPLICATION_PORT, RELAY_BASE_PORT + n))
    return routes


def _libc():
    return ctypes.CDLL("libc.so.6", use_errno=True)


@contextlib.contextmanager
def inside(namespace: str):
    """
    Run the block with this thread in network namespace C{namespace}: sockets
    created in it belong to that namespace for good.
    """
    libc = _libc()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(target)
        os.close(home)


class _Connection(http.client.HTTPConnection):
    namespace = ""

    def connect(self):
        with inside(self.namespace):
            self.sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def request(namespace: str, address: str, port: int, method: str, path: str, body: Optional[bytes] = None,
            headers: Optional[Dict[str, str]] = None, timeout: float = 2.0):  # fmt: skip
    """
    One HTTP request from inside C{namespace}: (status, headers, body bytes).
    """
    conn = _Connection(address, port, timeout=timeout)
    conn.namespace = namespace
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def run(argv: Sequence[str], stdin: Optional[str] = None) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> List[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def _kill_namespace(namespace: str) -> None:
    """
    SIGKILL whatever still runs in C{namespace}, then delete it.
    """
    try:
        pids = run(["ip", "netns", "pids", namespace]).split()
    except RuntimeError:
        pids = []
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


def remove_leftovers() -> List[str]:
    """
    Delete the namespaces (and their processes) of labs whose owner process
    is dead; returns their names.
    """
    removed = []
    for namespace in _namespaces():
        parts = namespace.split("-")
        if len(parts) < 4 or parts[0] != PREFIX or not parts[1].isdigit():
            continue
        if _alive(int(parts[1])):
            continue
        _kill_namespace(namespace)
        removed.append(namespace)
    return removed


@define
class Process:
    name: str
    host: str
    argv: List[str]
    log_path: str
    lab_role: bool = True
    popen: Optional[subprocess.Popen] = None
    paused: bool = False


@define
class Lab:
    """
    The hosts, the processes and the faults of one lab run.  Create, then
    L{start}; always L{stop} (it is safe after a failed start).  Every fault
    and repair is appended to L{events} as C{{"t": monotonic, "what": ...}}.
    """

    directory: str
    servers: int = 3
    replication: str = "sync"
    root: str = ROOT
    settings: Optional[Dict[str, Dict[str, str]]] = None
    python: str = sys.executable
    hosts: Dict[str, Host] = field(init=False)
    routes: List[Route] = field(init=False)
    events: List[dict] = field(init=False, factory=list)
    processes: Dict[str, Process] = field(init=False, factory=dict)
    namespaces: List[str] = field(init=False, factory=list)
    cuts: Set[Tuple[str, str]] = field(init=False, factory=set)
    delays: Dict[Tuple[str, str], float] = field(init=False, factory=dict)
    tag: str = field(init=False)
    config_path: str = field(init=False)

    def __attrs_post_init__(self) -> None:
        global _instances
        if self.servers < 2:
            raise ValueError("a lab needs at least 2 servers")
        _instances += 1
        self.tag = f"{PREFIX}-{os.getpid()}-{_instances}"
        self.hosts = hosts_of(self.servers)
        self.routes = relay_routes(self.servers)
        self.directory = os.path.abspath(self.directory)
        self.config_path = os.path.join(self.directory, "cluster.ini")

    # -- names -----------------------------------------------------------

    @property
    def server_names(self) -> Tuple[str, ...]:
        return server_names(self.servers)

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def address(self, host: str) -> str:
        return self.hosts[host].address

    @property
    def balancer_url(self) -> str:
        return f"http://{LB_ADDRESS}:{HTTP_PORT}"

    # -- start and stop --------------------------------------------------

    def start(self, timeout: float = 60.0, appliance: bool = True) -> None:
        """
        Build the network, start every role and wait until the cluster is
        ready; on any failure, undo what was built and raise.  Without
        C{appliance}, only the network and the relays (for tests of the lab
        itself).
        """
        self._check()
        try:
            remove_leftovers()
            os.makedirs(self.directory, exist_ok=True)
            with open(self.config_path, "w") as f:
                f.write(cluster_ini(self.servers, self.replication, self.settings))
            self._network()
            self._start_relays()
            if not appliance:
                self._wait(timeout, self._relays_not_ready)
                return
            for name in self.server_names:
                self._spawn(self._add(name, name, self._twistd(name, "server")))
            self._spawn(self._add("lb", "lb", self._twistd("s1", "balancer")))
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _check(self) -> None:
        missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
        if missing:
            raise LabUnavailable(
                f"the fault lab cannot start: {' and '.join(missing)} not found "
                "(apt-get install iproute2 nftables; the lab also needs root)"
            )
        if os.geteuid() != 0:
            raise LabUnavailable("the fault lab cannot start: creating network namespaces needs root")

    def _network(self) -> None:
        bridge = self.namespace("br")
        try:
            self._netns_add(bridge)
        except RuntimeError as e:
            raise LabUnavailable(f"the fault lab cannot start: cannot create a network namespace ({e})") from None
        run(["ip", "-n", bridge, "link", "set", "lo", "up"])
        run(["ip", "-n", bridge, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", bridge, "link", "set", "br0", "up"])
        for host in self.hosts.values():
            ns = self.namespace(host.name)
            self._netns_add(ns)
            veth = f"v-{host.name}"
            run(["ip", "-n", bridge, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            run(["ip", "-n", bridge, "link", "set", veth, "master", "br0"])
            run(["ip", "-n", bridge, "link", "set", veth, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{host.address}/15", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            run(["ip", "netns", "exec", ns, "nft", "-f", "-"], self._tables(host.name))

    def _netns_add(self, namespace: str) -> None:
        run(["ip", "netns", "add", namespace])
        self.namespaces.append(namespace)

    def _tables(self, host: str) -> str:
        """
        The host's nftables: an empty input chain for cuts and the DNAT of
        its relayed traffic to its own relay (not the relay's own traffic).
        """
        me = self.address(host)
        text = [
            "table inet lab {",
            "  chain input { type filter hook input priority 0; policy accept; }",
            "}",
            "table ip labnat {",
            "  chain output { type nat hook output priority -100; policy accept;",
        ]
        for route in self.routes:
            if route.source == host:
                text.append(
                    f"    meta skgid != {RELAY_GID} ip daddr {self.address(route.destination)} "
                    f"tcp dport {route.port} dnat to {me}:{route.relay_port}"
                )
        text += ["  }", "}"]
        return "\n".join(text) + "\n"

    def _twistd(self, node: str, roles: str) -> List[str]:
        return [
            self.python, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
            "appliance", "--config", self.config_path, "--node", node, "--roles", roles,
        ]  # fmt: skip

    def _start_relays(self) -> None:
        for host in self.hosts:
            routes = [r for r in self.routes if r.source == host]
            if not routes:
                continue
            argv = [self.python, "-m", "appliance.testing.relay", "--control", str(RELAY_CONTROL_PORT)]
            argv += ["--gid", str(RELAY_GID)]
            for r in routes:
                argv += [
                    "--route",
                    f"{self.address(host)}:{r.relay_port}={self.address(r.destination)}:{r.port}@{r.destination}",
                ]
            self._spawn(self._add(f"relay-{host}", host, argv))

    def _add(self, name: str, host: str, argv: List[str]) -> Process:
        process = Process(name, host, argv, os.path.join(self.directory, f"{name}.log"))
        self.processes[name] = process
        return process

    def _spawn(self, process: Process) -> None:
        with open(process.log_path, "ab") as log:
            process.popen = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(process.host), *process.argv],
                cwd=self.root,
                env=child_environment(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        process.paused = False

    def spawn(self, name: str, host: str, argv: List[str]) -> subprocess.Popen:
        """
        Start C{argv} as process C{name} in C{host} (cwd: the code under
        test; output in the lab directory); it is ended by L{stop}.
        """
        process = self._add(name, host, list(argv))
        process.lab_role = False
        self._spawn(process)
        return process.popen

    def stop(self) -> None:
        """
        End every process and delete every namespace; safe to call twice.
        """
        for process in self.processes.values():
            popen = process.popen
            if popen is None or popen.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGCONT)
                os.killpg(popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            popen = process.popen
            if popen is None:
                continue
            try:
                popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(5)
        for namespace in reversed(self.namespaces):
            _kill_namespace(namespace)
        self.namespaces.clear()

    # -- readiness and probes --------------------------------------------

    def health(self, server: str, timeout: float = 1.0) -> Optional[dict]:
        """
        C{/_appliance/health} of C{server}, asked from inside its own host (no
        cut reaches that), or None when it does not answer.
        """
        try:
            status, _, body = request(
                self.namespace(server), self.address(server), HTTP_PORT, "GET", "/_appliance/health", timeout=timeout
            )
        except (OSError, http.client.HTTPException):
            return None
        return json.loads(body) if status == 200 else None

    def balancer_answers(self, timeout: float = 1.0) -> bool:
        try:
            status, _, _ = request(
                self.namespace("lb"), LB_ADDRESS, HTTP_PORT, "GET", "/_appliance/lb-health", timeout=timeout
            )
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def running(self, name: str) -> bool:
        popen = self.processes[name].popen
        return popen is not None and popen.poll() is None

    def _relay_ready(self, host: str) -> bool:
        try:
            return self._control(host, "ping") == "ok"
        except OSError:
            return False

    def _exited(self) -> List[str]:
        return [
            f"{name} exited with {p.popen.returncode} (see {p.log_path})"
            for name, p in self.processes.items()
            if p.lab_role and p.popen is not None and p.popen.poll() is not None
        ]

    def _relays_not_ready(self) -> List[str]:
        return self._exited() + [
            f"{name} has no control channel"
            for name, process in self.processes.items()
            if name.startswith("relay-") and not self._relay_ready(process.host)
        ]

    def not_ready(self) -> List[str]:
        """
        What keeps the cluster from being ready now (empty when it is).
        """
        waiting = self._relays_not_ready()
        for name in self.server_names:
            h = self.health(name)
            if h is None:
                waiting.append(f"{name} does not answer its health check")
                continue
            unlinked = [p for p in self.server_names if p != name and not h["peers"].get(p)]
            if unlinked:
                waiting.append(f"{name} is not linked to {', '.join(unlinked)}")
            if h.get("status") != "ok":
                waiting.append(f"{name} does not hold its lease yet")
        if not self.balancer_answers():
            waiting.append("the balancer does not answer")
        return waiting

    def wait_ready(self, timeout: float = 30.0) -> float:
        """
        Wait until every server is linked to every other and holds its
        lease, and the balancer answers; returns the seconds it took.  Raises with what is missing.
        """
        return self._wait(timeout, self.not_ready)

    def _wait(self, timeout: float, not_ready) -> float:
        start = time.monotonic()
        waiting: List[str] = []
        while time.monotonic() - start < timeout:
            waiting = not_ready()
            if not waiting:
                return time.monotonic() - start
            if any("exited" in w for w in waiting):
                break
            time.sleep(0.1)
        raise RuntimeError(f"lab not ready after {time.monotonic() - start:.1f}s: {'; '.join(waiting)}")

    # -- faults ------------------------------------------------------------

    def _event(self, what: str, **details) -> float:
        t = time.monotonic()
        self.events.append({"t": t, "what": what, **details})
        with open(os.path.join(self.directory, "events.jsonl"), "a") as f:
            f.write(json.dumps(self.events[-1]) + "\n")
        return t

    def _known(self, *hosts: str) -> None:
        for h in hosts:
            if h not in self.hosts:
                raise ValueError(f"no host {h!r} in this lab (hosts: {', '.join(self.hosts)})")

    def cut_one_way(self, source: str, destination: str) -> float:
        """
        Drop, silently, every packet from C{source} to C{destination}.
        """
        self._known(source, destination)
        self._cut({(source, destination)})
        return self._event("cut_one_way", source=source, destination=destination)

    def cut(self, a: str, b: str) -> float:
        """
        Drop, silently, every packet between C{a} and C{b}.
        """
        self._known(a, b)
        self._cut({(a, b), (b, a)})
        return self._event("cut", a=a, b=b)

    def isolate(self, host: str, others: Optional[Iterable[str]] = None) -> float:
        """
        Cut C{host} from each of C{others} (default: every other host).
        """
        others = [h for h in (self.hosts if others is None else others) if h != host]
        self._known(host, *others)
        self._cut({(host, o) for o in others} | {(o, host) for o in others})
        return self._event("isolate", host=host, others=sorted(others))

    def heal(self) -> float:
        """
        Undo every cut.
        """
        self.cuts.clear()
        self._apply(self.hosts)
        return self._event("heal")

    def _cut(self, pairs: Set[Tuple[str, str]]) -> None:
        self.cuts |= pairs
        self._apply({h for pair in pairs for h in pair})

    def _apply(self, hosts: Iterable[str]) -> None:
        """
        Rewrite the input chain of each of C{hosts} from L{cuts}, at once.

        A host drops what comes from a host cut towards it (before any
        socket sees it: no RST, no ICMP), and the first leg of its own
        relayed connections towards a host it is cut from (a connection
        through the relay then times out like a direct one, instead of
        being accepted by the relay).
        """
        for host in sorted(set(hosts)):
            rules = ["flush chain inet lab input"]
            for source, destination in sorted(self.cuts):
                if destination == host:
                    rules.append(f"add rule inet lab input ip saddr {self.address(source)} drop")
                if source == host and any(r.source == host and r.destination == destination for r in self.routes):
                    rules.append(
                        f'add rule inet lab input iifname "lo" ct direction original '
                        f"ct original ip daddr {self.address(destination)} drop"
                    )
            run(["ip", "netns", "exec", self.namespace(host), "nft", "-f", "-"], "\n".join(rules) + "\n")

    def _control(self, host: str, line: str) -> str:
        with inside(self.namespace(host)):
            s = socket.socket()
        with s:
            s.settimeout(2.0)
            s.connect(("127.0.0.1", RELAY_CONTROL_PORT))
            s.sendall(line.encode("ascii") + b"\n")
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                answer += chunk
        return answer.decode("ascii", "replace").strip()

    def delay(self, a: str, b: str, seconds: float) -> float:
        """
        Delay the appliance's relayed traffic between C{a} and C{b} by
        C{seconds} each way, on connections that exist as well as new ones.
        """
        self._known(a, b)
        sides = [(s, d) for s, d in ((a, b), (b, a)) if any(r.source == s and r.destination == d for r in self.routes)]
        if not sides:
            raise ValueError(f"no relayed traffic between {a} and {b}")
        for source, destination in sides:
            answer = self._control(source, f"delay {destination} {seconds}")
            if answer != "ok":
                raise RuntimeError(f"relay in {source}: {answer}")
            self.delays[(source, destination)] = seconds
        return self._event("delay", a=a, b=b, seconds=seconds)

    def undelay(self, a: str, b: str) -> float:
        """
        Take the delay between C{a} and C{b} back to zero.
        """
        self.delay(a, b, 0.0)
        return self._event("undelay", a=a, b=b)

    def pause(self, name: str) -> float:
        """
        SIGSTOP process C{name}'s group.
        """
        os.killpg(self._popen(name).pid, signal.SIGSTOP)
        self.processes[name].paused = True
        return self._event("pause", name=name)

    def resume(self, name: str) -> float:
        os.killpg(self._popen(name).pid, signal.SIGCONT)
        self.processes[name].paused = False
        return self._event("resume", name=name)

    def kill(self, name: str) -> float:
        """
        SIGKILL process C{name}'s group and reap it.
        """
        popen = self._popen(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait(10)
        return self._event("kill", name=name)

    def restart(self, name: str) -> float:
        """
        Start C{name} again with the same arguments, as a supervisor would.
        """
        process = self.processes[name]
        if process.popen is not None and process.popen.poll() is None:
            raise RuntimeError(f"{name} is still running")
        self._spawn(process)
        return self._event("restart", name=name)

    def _popen(self, name: str) -> subprocess.Popen:
        process = self.processes.get(name)
        if process is None or process.popen is None:
            raise ValueError(f"no process {name!r} in this lab")
        return process.popen

    def log(self, name: str) -> str:
        with open(self.processes[name].log_path, errors="replace") as f:
            return f.read()
