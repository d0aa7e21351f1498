"""
Runtimes: what an interpreter without TLS refuses at startup (and which
tests say why they do not run there), the interpreter of child processes
(C{[cluster] runtime}), and listening sockets shared by the processes of
one service (C{SO_REUSEPORT}).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from appliance import runtime
from appliance.config import Address, ClusterConfig, ConfigError
from appliance.listen import listen_tcp, listen_udp
from appliance.runtime import child_environment

from . import helpers
from .helpers import ROOT, children_of, cluster_ini, free_ports, http, socket_inodes, spawn, twistd, wait_for, write

TLS_BALANCER = "\n[balancer:lb1]\nlisten = 127.0.0.1:{port}\nhttps = 127.0.0.1:{https}\ntls_cert = lb.pem\ntls_key = lb.key\n"


def no_tls(name: str):
    raise ImportError(f"No module named {name!r}")


class TlsMissingTests(SynchronousTestCase):
    def cluster(self, extra: str = "", balancer: str = "") -> ClusterConfig:
        text, _ = cluster_ini(names=("s1",), extra=extra, balancer=balancer)
        return ClusterConfig.from_string(text, "c.ini")

    def test_reason_names_what_is_missing(self):
        """Without pyOpenSSL the reason names both packages, the interpreter and the import error."""
        reason = runtime.tls_missing(no_tls)
        self.assertIn("TLS needs pyOpenSSL and cryptography", reason)
        self.assertIn(sys.version.split()[0], reason)
        self.assertIn("'OpenSSL.SSL'", reason)

    def test_present(self):
        """Where both import, nothing is missing."""
        self.assertIsNone(runtime.tls_missing(lambda name: None))

    def test_https_refused_without_tls(self):
        """A balancer's https address is refused with one line naming its section and key when TLS is missing."""
        https, port = free_ports(2)
        cluster = self.cluster(balancer=TLS_BALANCER.format(port=port, https=https))
        e = self.assertRaises(ConfigError, runtime.check_tls, cluster, no_tls)
        self.assertTrue(str(e).startswith("c.ini: [balancer:lb1] https: TLS needs pyOpenSSL"), str(e))
        self.assertNotIn("\n", str(e))

    def test_replication_tls_refused_without_tls(self):
        """Replication TLS is refused naming [cluster] tls_cert when TLS is missing."""
        cluster = self.cluster(extra="tls_cert = a.pem\ntls_key = a.key\ntls_ca = ca.pem")
        e = self.assertRaises(ConfigError, runtime.check_tls, cluster, no_tls)
        self.assertTrue(str(e).startswith("c.ini: [cluster] tls_cert: TLS needs"), str(e))

    def test_no_tls_configured(self):
        """A cluster without TLS starts whatever the interpreter lacks."""
        runtime.check_tls(self.cluster(), no_tls)

    def test_startup_refused_by_twistd(self):
        """A real twistd whose interpreter cannot import OpenSSL stops with one line and exit status 1, no traceback."""
        https, port = free_ports(2)
        text, _ = cluster_ini(names=("s1",), balancer=TLS_BALANCER.format(port=port, https=https) + "node = s1\n")
        path = write(os.path.abspath(self.mktemp() + ".ini"), text)
        shadow = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(shadow, "OpenSSL"))
        write(os.path.join(shadow, "OpenSSL", "__init__.py"), "raise ImportError('no OpenSSL for this test')\n")
        env = dict(os.environ, PYTHONPATH=shadow)
        done = subprocess.run(twistd("--config", path, "--node", "s1", "--roles", "balancer"), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertNotIn("Traceback", done.stdout + done.stderr)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"appliance: {path}: [balancer:lb1] https: TLS needs pyOpenSSL"), lines)


class TlsTestsTests(SynchronousTestCase):
    def test_tls_tests_skip_on_pypy_only(self):
        """The TLS tests skip on PyPy, saying why; on CPython they run, and a missing TLS extra fails here."""
        if runtime.PYPY:
            self.assertIn("PyPy", helpers.SKIP_TLS_ON_PYPY)
            self.assertIn("cryptography", helpers.SKIP_TLS_ON_PYPY)
        else:
            self.assertIsNone(helpers.SKIP_TLS_ON_PYPY)
            self.assertIsNone(runtime.tls_missing())


class InterpreterTests(SynchronousTestCase):
    def cluster(self, runtime_line: str) -> ClusterConfig:
        text, _ = cluster_ini(names=("s1",), extra=runtime_line)
        return ClusterConfig.from_string(text, "c.ini")

    def test_default_is_this_interpreter(self):
        """Without runtime, children run under this process's interpreter."""
        self.assertEqual(runtime.interpreter(self.cluster("")), sys.executable)

    def test_named_runtime(self):
        """runtime names a command found on PATH, or a path."""
        self.assertEqual(runtime.interpreter(self.cluster(f"runtime = {sys.executable}")), os.path.abspath(sys.executable))
        runtime.check_runtime(self.cluster(f"runtime = {sys.executable}"), cwd=ROOT)

    def test_unknown_runtime(self):
        """A runtime that names no interpreter stops startup with one line naming [cluster] runtime."""
        cluster = self.cluster("runtime = no-such-python-here")
        e = self.assertRaises(ConfigError, runtime.check_runtime, cluster)
        self.assertEqual(str(e), "c.ini: [cluster] runtime: no such interpreter: no-such-python-here")

    def test_runtime_that_cannot_run_the_appliance(self):
        """A runtime that is not a Python with the appliance installed is refused, with its last error line."""
        cluster = self.cluster("runtime = false")
        e = self.assertRaises(ConfigError, runtime.check_runtime, cluster, ROOT)
        self.assertTrue(str(e).startswith("c.ini: [cluster] runtime: "), str(e))
        self.assertIn("cannot run the appliance", str(e))


def wrapper(case: SynchronousTestCase, shadow_openssl: bool = False) -> str:
    """
    An interpreter of its own for C{runtime}: this one, marking the
    environment of what it runs (and, with C{shadow_openssl}, unable to
    import OpenSSL).
    """
    directory = os.path.abspath(case.mktemp())
    os.makedirs(os.path.join(directory, "OpenSSL"))
    write(os.path.join(directory, "OpenSSL", "__init__.py"), "raise ImportError('no OpenSSL in this runtime')\n")
    path = "PYTHONPATH=" + directory + " " if shadow_openssl else ""
    script = write(os.path.join(directory, "python"),
                   f"#!/bin/sh\nAPPLIANCE_TEST_RUNTIME={directory} {path}exec {sys.executable} \"$@\"\n")
    os.chmod(script, 0o755)
    return script


class RuntimeTests(SynchronousTestCase):
    def test_runtime_without_tls_refused(self):
        """A runtime that cannot do the TLS the cluster configures stops startup with one line naming the TLS setting."""
        https, port = free_ports(2)
        text, _ = cluster_ini(names=("s1",), extra=f"runtime = {wrapper(self, shadow_openssl=True)}",
                              balancer=TLS_BALANCER.format(port=port, https=https))
        cluster = ClusterConfig.from_string(text, "c.ini")
        e = self.assertRaises(ConfigError, runtime.check_runtime, cluster, ROOT)
        self.assertTrue(str(e).startswith("c.ini: [balancer:lb1] https: runtime "), str(e))
        self.assertIn("TLS needs pyOpenSSL", str(e))

    def test_all_in_one_under_a_runtime(self):
        """With runtime, the all-in-one serves the cart through its balancer while every role is a child under that runtime."""
        (lb,) = free_ports(1)
        python = wrapper(self)
        marker = os.path.dirname(python)
        text, _ = cluster_ini(names=("s1", "s2"), extra=f"runtime = {python}",
                              balancer=f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\nhealth_interval = 200ms\n")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = write(os.path.join(directory, "cluster.ini"), text)
        proc = spawn(self, twistd("--config", config), os.path.join(directory, "all.log"))

        def cart():
            status, _, body = http("POST", f"http://127.0.0.1:{lb}/cart/items", {"item": "apple"}, timeout=2.0)
            return status == 200 and body

        self.assertIn(b"apple", wait_for(cart, 60, "the cart through the balancer"))
        children = children_of(proc.pid)
        self.assertEqual(len(children), 3, children)
        for pid in children:
            with open(f"/proc/{pid}/environ", "rb") as f:
                self.assertIn(f"APPLIANCE_TEST_RUNTIME={marker}".encode(), f.read().split(b"\0"))
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            self.assertNotIn(b"APPLIANCE_TEST_RUNTIME", f.read())


class ReusePortTests(SynchronousTestCase):
    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor

    def close(self, port) -> None:
        self.addCleanup(port.stopListening)

    def test_tcp_shared(self):
        """Two listeners with reuse_port share one address; a third without it cannot listen there."""
        (port,) = free_ports(1)
        address = Address("127.0.0.1", port)
        factory = Factory.forProtocol(Protocol)
        first = listen_tcp(self.reactor, address, factory, True)
        self.close(first)
        second = listen_tcp(self.reactor, address, factory, True)
        self.close(second)
        self.assertEqual((first.getHost().port, second.getHost().port), (port, port))
        self.assertRaises(CannotListenError, listen_tcp, self.reactor, address, factory, False)

    def test_tcp_taken(self):
        """An address held by a socket without SO_REUSEPORT is a CannotListenError naming it."""
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        e = self.assertRaises(CannotListenError, listen_tcp, self.reactor, Address("127.0.0.1", port),
                              Factory.forProtocol(Protocol), True)
        self.assertEqual((e.interface, e.port), ("127.0.0.1", port))
        self.assertEqual(e.socketError.strerror, "Address already in use")

    def test_udp_shared(self):
        """Two UDP listeners with reuse_port share one address."""
        (port,) = free_ports(1)
        address = Address("127.0.0.1", port)
        first = listen_udp(self.reactor, address, DatagramProtocol(), True, 65535)
        self.close(first)
        second = listen_udp(self.reactor, address, DatagramProtocol(), True, 65535)
        self.close(second)
        self.assertEqual((first.getHost().port, second.getHost().port), (port, port))


def udp_inodes(port: int) -> set:
    """
    Inodes of the IPv4 UDP sockets bound to C{port}.
    """
    with open("/proc/net/udp") as f:
        next(f)
        rows = [line.split() for line in f]
    return {row[9] for row in rows if int(row[1].split(":")[1], 16) == port}


class DnsProcessesTests(SynchronousTestCase):
    def test_two_responder_processes(self):
        """[dns] processes = 2 runs two supervised responders, each with its own socket on the address; both UDP and TCP answer."""
        import dns.flags
        import dns.message
        import dns.query

        (lb,) = free_ports(1)
        while True:
            (port,) = free_ports(1)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                    break
                except OSError:
                    continue
        text, _ = cluster_ini(names=("s1",), balancer=f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\n",
                              dns=f"\n[dns]\nlisten = 127.0.0.1:{port}\nprocesses = 2\n")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = write(os.path.join(directory, "cluster.ini"), text)
        proc = spawn(self, twistd("--config", config, "--roles", "dns"), os.path.join(directory, "dns.log"))

        def both_bound():
            children = children_of(proc.pid)
            inodes = udp_inodes(port)
            return len(children) == 2 and all(socket_inodes(pid) & inodes for pid in children) and children

        children = wait_for(both_bound, 60, "two responder processes bound to the address")
        self.assertFalse(socket_inodes(proc.pid) & udp_inodes(port), "the supervisor holds the address itself")
        query = dns.message.make_query("app.cluster.test", "A")
        for ask in (dns.query.udp, dns.query.tcp):
            answer = ask(query, "127.0.0.1", port=port, timeout=5)
            self.assertEqual(answer.id, query.id)
            self.assertTrue(answer.flags & dns.flags.AA, answer)
        self.assertEqual(len(children), 2)


class ChildEnvironmentTests(SynchronousTestCase):
    def test_pypy_collector_settings_are_defaults(self):
        """A child's environment is this one's plus PYPY_GC_INCREMENT_STEP = 128KB and PYPY_GC_NURSERY = 16MB, each unless the operator set it."""
        self.assertEqual(child_environment({"A": "b"}), {"A": "b", "PYPY_GC_INCREMENT_STEP": "128KB", "PYPY_GC_NURSERY": "16MB"})
        self.assertEqual(child_environment({"PYPY_GC_INCREMENT_STEP": "1MB"}), {"PYPY_GC_INCREMENT_STEP": "1MB", "PYPY_GC_NURSERY": "16MB"})
        self.assertEqual(child_environment({"PYPY_GC_NURSERY": "4MB"}), {"PYPY_GC_INCREMENT_STEP": "128KB", "PYPY_GC_NURSERY": "4MB"})
        mine = {"A": "b"}
        child_environment(mine)
        self.assertEqual(mine, {"A": "b"})
