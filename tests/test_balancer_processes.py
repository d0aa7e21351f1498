"""
A balancer of several processes (C{processes = 2}, C{SO_REUSEPORT}): the
balancer's end-to-end behaviour tests run unchanged against a real
supervisor and its children, and a request that must be refused is refused
by every process.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Dict, List, Tuple

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from appliance.config import NodeConfig

from . import test_balancer_e2e as e2e
from .helpers import children_of, socket_inodes, spawn, twistd, write

PROCESSES = 2


def _tcp_sockets(port: int) -> Dict[str, Tuple[int, int, str]]:
    """
    Socket inode -> (local port, remote port, state: "0A" is listening) of
    every IPv4 TCP socket whose local or remote port is C{port}.
    """
    found = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            lport, rport = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
            if port in (lport, rport):
                found[inode] = (lport, rport, state)
    return found


def listeners(pids: List[int], port: int) -> Dict[int, bool]:
    """
    Whether each of C{pids} holds a socket listening on C{port}.
    """
    listening = {inode for inode, (lport, _, state) in _tcp_sockets(port).items() if lport == port and state == "0A"}
    return {pid: bool(socket_inodes(pid) & listening) for pid in pids}


def owner(pids: List[int], port: int, client_port: int):
    """
    Which of C{pids} holds the server side of the connection from
    C{client_port} to C{port}, or C{None}.
    """
    inodes = {inode for inode, (lport, rport, _) in _tcp_sockets(port).items() if (lport, rport) == (port, client_port)}
    for pid in pids:
        if socket_inodes(pid) & inodes:
            return pid
    return None


def _text(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class ProcessCluster(e2e.Cluster):
    """
    The stand-ins of L{e2e.Cluster}, in this process, behind a real
    C{twistd appliance --roles balancer} whose balancer has C{processes = 2}.
    """

    def start_balancer(self, nodes: Tuple[NodeConfig, ...], balancer) -> None:
        test = self.test
        directory = os.path.abspath(test.mktemp())
        os.makedirs(directory)
        self.port = e2e.free_port()
        self.https_port = None
        lines = ["[cluster]", "name = app.test", "secret = secret-secret", "", "[balancer:lb]",
                 f"listen = 127.0.0.1:{self.port}", f"processes = {PROCESSES}"]
        lines += [f"{key} = {_text(value)}" for key, value in sorted(balancer.items())]
        for n in nodes:
            lines += ["", f"[node:{n.name}]", f"http = {n.http}", f"replication = {n.replication}",
                      f"machine = {n.machine}", f"rack = {n.rack}"]
        config = write(os.path.join(directory, "cluster.ini"), "\n".join(lines) + "\n")
        self.log = os.path.join(directory, "balancer.log")
        self.proc = spawn(test, twistd("--config", config, "--roles", "balancer"), self.log)
        self.pids = self._wait_for_children()

    def _wait_for_children(self) -> List[int]:
        """
        Block until every child process listens (the supervisor itself does
        not): the stand-ins need the reactor only once requests come.
        """
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the balancer exited: {self._log_tail()}")
            pids = children_of(self.proc.pid)
            if len(pids) == PROCESSES and all(listeners(pids, self.port).values()):
                return sorted(pids)
            if time.monotonic() > deadline:
                raise AssertionError(f"{PROCESSES} balancer processes not listening: {self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-2000:]


class ProcessLimitTests(e2e.LimitTests):
    """e2e.LimitTests, unchanged, against two balancer processes."""

    timeout = 60
    make = ProcessCluster


class ProcessPluginModeTests(TestCase):
    """The e2e.PluginModeTests that look only at the wire, unchanged, against two balancer processes."""

    timeout = 60
    make = ProcessCluster


# Not the others: they look at (or set) the balancer's state in the test's
# process, or at a round robin that each process keeps for itself.
for _name in (
    "test_routes_to_primary",
    "test_refusing_primary_falls_back",
    "test_bad_cookie_is_no_cookie",
    "test_post_not_retried_when_server_dies",
    "test_get_retried_when_server_dies",
    "test_keep_alive",
    "test_lb_health",
):
    setattr(ProcessPluginModeTests, _name, getattr(e2e.PluginModeTests, _name))


def _length(data: bytes) -> int:
    head = data[: data.find(b"\r\n\r\n")].lower()
    if b"content-length:" not in head:
        return 0
    return int(head.split(b"content-length:")[1].split(b"\r\n")[0])


class EveryProcessTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_smuggling_refused_by_every_process(self):
        """A request with both Content-Length and Transfer-Encoding gets 400 from each balancer process, and no server sees it."""
        c = ProcessCluster(self, 1)
        smuggle = e2e.get(method=b"POST", body=b"0\r\n\r\n", extra=b"Transfer-Encoding: chunked\r\n")
        health = e2e.get(b"/_appliance/lb-health").replace(b"Connection: close\r\n", b"")
        refused_by = set()
        for _ in range(64):
            if refused_by == set(c.pids):
                break
            # The health answer proves a process accepted the connection
            # (and holds its socket) before the refused request is sent.
            healthy, refused, pid = yield threads.deferToThread(self._health_then, c.port, health, smuggle, c.pids)
            self.assertEqual(e2e.parse(healthy)[0], 200)
            self.assertEqual(e2e.parse(refused)[0], 400, refused)
            refused_by.add(pid)
        self.assertEqual(refused_by, set(c.pids), "some process got no connection in 64")
        self.assertEqual(c.seen("s1"), [])

    def test_killed_process_restarted(self):
        """A balancer process that dies is started again by the supervisor and listens on the shared address."""
        c = ProcessCluster(self, 1)
        os.kill(c.pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while c.pids[0] in children_of(c.proc.pid) or len(children_of(c.proc.pid)) < PROCESSES:
            self.assertLess(time.monotonic(), deadline, "the killed process was not replaced")
            time.sleep(0.05)
        restarted = c._wait_for_children()
        self.assertNotIn(c.pids[0], restarted)
        self.assertIn(c.pids[1], restarted)

    def _health_then(self, port: int, first: bytes, second: bytes, pids: List[int]):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(first)
            healthy = _read_answer(s)
            pid = owner(pids, port, s.getsockname()[1])
            s.sendall(second)
            return healthy, _read_answer(s), pid


def _read_answer(s: socket.socket) -> bytes:
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0 and len(data) >= end + 4 + _length(data):
            return data
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
