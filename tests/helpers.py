"""
Shared test helpers: configs on free loopback ports, and waiting for real
processes without sleeping blindly.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from appliance.runtime import PYPY, tls_missing

#: C{skip} of the tests that need TLS: on PyPy, where cryptography has no
#: build here, the reason why; on CPython never (a missing TLS fails there).
SKIP_TLS_ON_PYPY = tls_missing() if PYPY else None

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

BASE = """
[cluster]
name = app.cluster.test
secret = test-secret-123
cookie = APPSESSION
replication = {replication}
heartbeat_interval = 250ms
heartbeat_misses = 4
replication_timeout = 2s
{extra}
"""

NODE = """
[node:{name}]
http = 127.0.0.1:{http}
replication = 127.0.0.1:{repl}
machine = m{index}
rack = r{rack}
"""

APP = """
[app:cart]
mount = /cart
wsgi = appliance.demo.cart:app
"""


#: Every port free_ports handed out in this process.
_handed_out: set = set()


def free_ports(n: int) -> list:
    """
    Ports the kernel hands out now; bound together so they differ, and
    none handed out before in this process (a test that asks twice, for
    its sections and then for its nodes, must not get one port twice: an
    admin test's DNS once got a node's replication port).
    """
    socks = []
    ports: list = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in _handed_out:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    _handed_out.update(ports)
    return ports


def cluster_ini(names=("s1", "s2", "s3"), replication="sync", extra="", balancer=None, dns=None, apps=""):
    """
    A config text for C{names} on free ports; returns (text, {name: (http, repl)}).
    """
    ports = free_ports(2 * len(names))
    text = BASE.format(replication=replication, extra=extra)
    where = {}
    for i, name in enumerate(names):
        http, repl = ports[2 * i], ports[2 * i + 1]
        where[name] = (http, repl)
        text += NODE.format(name=name, http=http, repl=repl, index=i + 1, rack=1 + (i // 2))
    if balancer is not None:
        text += balancer
    if dns is not None:
        text += dns
    return text + APP + apps, where


def shipped_on_free_ports(text=None):
    """
    The shipped etc/cluster.ini (or C{text}) with every 127.0.0.1 address
    moved to a free port; returns (text, {old port: new port}).
    """
    if text is None:
        with open(os.path.join(ROOT, "etc", "cluster.ini")) as f:
            text = f.read()
    old = sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text)), key=int)
    moved = dict(zip(old, (str(p) for p in free_ports(len(old)))))
    return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: "127.0.0.1:" + moved[m.group(1)], text), moved


def write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def twistd(*args) -> list:
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=", "appliance", *args]


def spawn(case, argv, log_path):
    """
    Start a real process from the project root; killed at cleanup.
    """
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop():
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)
        log.close()

    case.addCleanup(stop)
    return proc


def http(method, url, data=None, cookie=None, timeout=5.0):
    """
    One blocking HTTP request; returns (status, headers, body bytes).
    """
    body = None
    headers = {}
    if data is not None:
        body = urllib.parse.urlencode(data).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if cookie:
        headers["Cookie"] = cookie
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def session_call(method, url, cookie=None, data=None, name="APPSESSION"):
    """
    One request carrying the session cookie C{cookie} (a value, or None);
    returns (status, body as JSON, the cookie the answer set or C{cookie}).
    """
    status, headers, body = http(method, url, data, f"{name}={cookie}" if cookie else None)
    return status, json.loads(body), set_cookie_value(headers, name) or cookie


def socket_inodes(pid: int) -> set:
    """
    The inodes of the sockets process C{pid} holds (from /proc; empty once it is gone).
    """
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def children_of(pid: int) -> list:
    """
    The processes whose parent is C{pid} (from /proc).
    """
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def health(port):
    status, _, body = http("GET", f"http://127.0.0.1:{port}/_appliance/health", timeout=1.0)
    return json.loads(body) if status == 200 else None


def set_cookie_value(headers, name="APPSESSION"):
    for value in headers.get_all("Set-Cookie") or []:
        if value.startswith(name + "="):
            return value.split(";", 1)[0][len(name) + 1 :]
    return None


class RealNodes:
    """
    Session servers as real processes (one per node, as a multi-host
    deployment runs them), on free loopback ports.
    """

    def __init__(self, case, names=("s1", "s2", "s3"), replication="sync", extra="", balancer=None, dns=None, apps=""):
        self.case = case
        self.text, self.ports = cluster_ini(names, replication, extra, balancer, dns, apps)
        self.dir = os.path.abspath(case.mktemp())
        os.makedirs(self.dir)
        self.config = write(os.path.join(self.dir, "cluster.ini"), self.text)
        self.procs = {}
        for name in names:
            self.start(name)
        for name in names:
            self.wait_linked(name)

    def start(self, name, roles="server"):
        """
        Start node C{name}'s C{roles} as one process (named C{name} for
        servers, C{name}-ROLES otherwise).
        """
        key = name if roles == "server" else f"{name}-{roles}"
        argv = twistd("--config", self.config, "--node", name, "--roles", roles)
        self.procs[key] = spawn(self.case, argv, os.path.join(self.dir, f"{key}.log"))
        return self.procs[key]

    def wait_linked(self, name, timeout=30.0):
        others = [n for n in self.ports if n != name and n in self.procs and self.procs[n].poll() is None]

        def linked():
            h = health(self.ports[name][0])
            return h is not None and h["status"] == "ok" and all(h["peers"].get(o) for o in others)

        wait_for(linked, timeout, f"{name} to link to {others}")

    def url(self, name, path):
        return f"http://127.0.0.1:{self.ports[name][0]}{path}"

    def kill(self, name):
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(10)

    def log(self, name):
        with open(os.path.join(self.dir, f"{name}.log"), errors="replace") as f:
            return f.read()


def quorum_for(clock, cluster, name, now, call=None, connected=lambda peer: False, incarnation=1):
    """
    A real Quorum for node C{name} whose peers never answer (enough for a
    one-node cluster, which is its own majority, or for edge tests).
    """
    from twisted.internet import defer

    from appliance.core.membership import Membership, Timing
    from appliance.replication.link import PeerUnavailable
    from appliance.server.quorum import Quorum

    settings = cluster.cluster
    # As a node that has been up a while: its voter grants and votes at once.
    membership = Membership(
        name, incarnation, cluster.node_names, [b.name for b in cluster.witnesses],
        Timing(settings.lease_time, settings.clock_drift), now() - settings.lease_time,
    )
    if call is None:
        def call(peer, method, *args):
            return defer.fail(PeerUnavailable(peer))
    return Quorum(clock, membership, now, call, connected, lambda server: defer.succeed(False), settings.heartbeat_interval)
