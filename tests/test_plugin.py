"""
The twistd plugin: found, its options parsed, its service built; and the
package installs and uninstalls cleanly.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from appliance import tap
from appliance.service import child_command, make_service, section_command
from appliance.config import ClusterConfig

from .helpers import ROOT, RealNodes, cluster_ini, free_ports, http, twistd, write

SHIPPED = os.path.join(ROOT, "etc", "cluster.ini")


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self):
        """getPlugins finds the 'appliance' service maker pointing at appliance.tap."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("appliance", makers)
        self.assertIs(makers["appliance"].options, tap.Options)

    def test_options(self):
        """--config, --node and --roles are parsed; unknown roles are a usage error."""
        options = tap.Options()
        options.parseOptions(["--config", SHIPPED, "--node", "s2", "--roles", "server"])
        self.assertEqual((options["config"], options["node"], options["roles"]), (SHIPPED, "s2", ("server",)))
        defaults = tap.Options()
        defaults.parseOptions([])
        self.assertEqual((defaults["config"], defaults["node"]), ("etc/cluster.ini", None))
        self.assertRaises(usage.UsageError, tap.Options().parseOptions, ["--roles", "cache"])

    def test_unknown_node_is_one_line(self):
        """--node naming no node stops startup with a one-line error."""
        options = tap.Options()
        options.parseOptions(["--config", SHIPPED, "--node", "s9"])
        self.assertRaises(SystemExit, tap.load, options)

    def test_unknown_section_is_one_line(self):
        """--section naming no balancer or dns section stops startup with a one-line error."""
        import io
        from unittest import mock

        options = tap.Options()
        options.parseOptions(["--config", SHIPPED, "--section", "balancer:nope"])
        with mock.patch("sys.stderr", new_callable=io.StringIO) as err:
            self.assertRaises(SystemExit, tap.load, options)
        self.assertEqual(err.getvalue(), f"appliance: {SHIPPED}: [balancer:nope]: --section names no balancer or dns section\n")

    def test_node_service(self):
        """--node s1 --roles server builds just that session server, its process's collector policy and its admin listener."""
        from appliance.admin.listener import AdminService
        from appliance.server.collector import Collector
        from appliance.server.service import SessionServerService

        cluster = ClusterConfig.from_path(SHIPPED)
        top = make_service(MemoryReactorClock(), cluster, SHIPPED, "s1", ("server",))
        self.assertIsInstance(top, MultiService)
        (server, memory, admin) = list(top)
        self.assertIsInstance(server, SessionServerService)
        self.assertIsInstance(memory, Collector)
        self.assertEqual(memory.node, "s1")
        self.assertIsInstance(admin, AdminService)
        self.assertEqual(server.name, "s1")

    def test_node_service_listens(self):
        """Starting a node's service listens on its HTTP, replication, client and admin ports and links to its peers and the witness."""
        cluster = ClusterConfig.from_path(SHIPPED)
        reactor = MemoryReactorClock()
        top = make_service(reactor, cluster, SHIPPED, "s1", ("server",))
        top.startService()
        self.addCleanup(top.stopService)
        ports = sorted(p[0] for p in reactor.tcpServers)
        self.assertEqual(ports, [8081, 8721, 8791, 8891])
        targets = sorted(c[1] for c in reactor.tcpClients)
        self.assertEqual(targets, [8790, 8792, 8793])

    def test_child_command(self):
        """Each all-in-one session server is the same plugin in its own process."""
        argv = child_command("etc/cluster.ini", "s2")
        self.assertEqual(argv[0], sys.executable)
        self.assertEqual(argv[-4:], ["--node", "s2", "--roles", "server"])
        self.assertIn(os.path.abspath("etc/cluster.ini"), argv)


class InstallTests(SynchronousTestCase):
    def test_install_help_uninstall(self):
        """pip install . gives a working 'twistd appliance --help' anywhere; uninstall leaves Twisted importable."""
        venv = os.path.abspath(self.mktemp())
        # Not this process's PYTHONPATH (trial -j sets it to its sys.path):
        # pip would find Twisted there and install no twistd in the venv.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120, env=env)
        py = os.path.join(venv, "bin", "python")
        subprocess.run([py, "-m", "pip", "install", "-q", "twisted", "attrs"], check=True, timeout=600, capture_output=True, env=env)
        build = os.path.abspath(self.mktemp())
        shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns("_trial_temp*", ".git", ".pypy", "*.pyc", "__pycache__"))
        subprocess.run(
            [py, "-m", "pip", "install", "-q", "--no-deps", build],
            check=True, timeout=300, capture_output=True, env=env,
        )
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        twistd = os.path.join(venv, "bin", "twistd")
        helped = subprocess.run([py, twistd, "appliance", "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=120, env=env)
        self.assertEqual(helped.returncode, 0, helped.stderr)
        self.assertIn("--config", helped.stdout)
        self.assertIn("--node", helped.stdout)
        subprocess.run([py, "-m", "pip", "uninstall", "-y", "-q", "appliance"], check=True, timeout=120, capture_output=True, env=env)
        still = subprocess.run(
            [py, "-c", "import twisted.plugins, twisted.internet.reactor; from twisted.plugin import getPlugins; "
                       "from twisted.application.service import IServiceMaker; "
                       "print(sorted(m.tapname for m in getPlugins(IServiceMaker)))"],
            cwd=elsewhere, capture_output=True, text=True, timeout=120, env=env,
        )
        self.assertEqual(still.returncode, 0, still.stderr)
        self.assertNotIn("'appliance'", still.stdout)
        self.assertIn("'web'", still.stdout)


class AllInOneServiceTests(SynchronousTestCase):
    def test_all_in_one(self):
        """Without --node: DNS and balancers in this process (and their admin listeners and the cluster's), each session server a supervised child."""
        from twisted.runner.procmon import ProcessMonitor

        from appliance.balancer.service import BalancerService
        from appliance.dns.service import DnsService

        cluster = ClusterConfig.from_path(SHIPPED)
        top = make_service(MemoryReactorClock(), cluster, SHIPPED)
        kinds = sorted(type(s).__name__ for s in top)
        self.assertEqual(
            kinds, sorted([DnsService.__name__, BalancerService.__name__, ProcessMonitor.__name__] + ["AdminService"] * 3)
        )
        (monitor,) = [s for s in top if isinstance(s, ProcessMonitor)]
        self.assertEqual(sorted(monitor.processes), ["s1", "s2", "s3"])
        self.assertEqual(monitor.processes["s1"][0], child_command(SHIPPED, "s1"))

    def test_children_have_their_drain_before_sigkill(self):
        """When the all-in-one stops, its session servers get drain_timeout and 5 s after SIGTERM before SIGKILL (not procmon's 5 s)."""
        from twisted.runner.procmon import ProcessMonitor

        text = open(SHIPPED).read().replace("drain_timeout = 30s", "drain_timeout = 20s", 1)
        cluster = ClusterConfig.from_string(text, SHIPPED)
        (monitor,) = [s for s in make_service(MemoryReactorClock(), cluster, SHIPPED) if isinstance(s, ProcessMonitor)]
        self.assertEqual(monitor.killTime, 25)

    def test_runtime_runs_every_role_in_children(self):
        """With runtime, the all-in-one only supervises: servers, balancer and DNS are children under that interpreter."""
        from twisted.runner.procmon import ProcessMonitor

        text = open(SHIPPED).read().replace("[cluster]\n", f"[cluster]\nruntime = {sys.executable}\n", 1)
        cluster = ClusterConfig.from_string(text, SHIPPED)
        (monitor, admin) = list(make_service(MemoryReactorClock(), cluster, SHIPPED))
        self.assertIsInstance(monitor, ProcessMonitor)
        self.assertEqual(admin.root.section, "cluster")
        self.assertEqual(sorted(monitor.processes), ["balancer:lb1", "dns", "s1", "s2", "s3"])
        self.assertEqual(monitor.processes["balancer:lb1"][0], section_command(SHIPPED, "balancer:lb1", sys.executable))
        self.assertEqual(monitor.processes["dns"][0][-2:], ["--section", "dns"])
        self.assertEqual({argv[0] for argv, *_ in monitor.processes.values()}, {os.path.abspath(sys.executable)})

    def test_children_get_pypys_collector_settings(self):
        """Every supervised child starts with PYPY_GC_INCREMENT_STEP = 128KB and PYPY_GC_NURSERY = 16MB (PyPy's defaults cost a balancer its p99 and sync replication half its rate), and this process's other variables."""
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("PYPY_GC_")} | {"MARK": "1"})
        text = open(SHIPPED).read().replace("[cluster]\n", f"[cluster]\nruntime = {sys.executable}\n", 1)
        (monitor, _) = list(make_service(MemoryReactorClock(), ClusterConfig.from_string(text, SHIPPED), SHIPPED))
        envs = [env for _, _, _, env in monitor.processes.values()]
        self.assertEqual(len(envs), 5)
        for env in envs:
            self.assertEqual((env["PYPY_GC_INCREMENT_STEP"], env["PYPY_GC_NURSERY"], env["MARK"]), ("128KB", "16MB", "1"))

    def test_processes_are_supervised_children(self):
        """processes = 2 makes a balancer two supervised children, each serving the section with SO_REUSEPORT."""
        from twisted.runner.procmon import ProcessMonitor

        from appliance.balancer.service import BalancerService

        text = open(SHIPPED).read().replace("\nprocesses = 1                ; N > 1: N supervised processes share", "\nprocesses = 2 ;", 1)
        text = text.replace("witness = ", "; witness = ")
        cluster = ClusterConfig.from_string(text, SHIPPED)
        top = make_service(MemoryReactorClock(), cluster, SHIPPED)
        (monitor,) = [s for s in top if isinstance(s, ProcessMonitor)]
        self.assertEqual(sorted(monitor.processes), ["balancer:lb1#1", "balancer:lb1#2", "s1", "s2", "s3"])
        self.assertEqual(monitor.processes["balancer:lb1#2"][0], section_command(SHIPPED, "balancer:lb1"))
        (child, _admin) = list(make_service(MemoryReactorClock(), cluster, SHIPPED, section="balancer:lb1"))
        self.assertIsInstance(child, BalancerService)
        self.assertTrue(child.reuse_port)
        (alone, _admin) = list(make_service(MemoryReactorClock(), ClusterConfig.from_path(SHIPPED), SHIPPED, section="balancer:lb1"))
        self.assertFalse(alone.reuse_port)

    def test_node_roles(self):
        """--node picks the balancers and DNS placed on that node."""
        from appliance.balancer.service import BalancerService
        from appliance.dns.service import DnsService

        text = open(SHIPPED).read().replace("; node = s1                  ; with --node: the node that runs the responder", "node = s2")
        text = text.replace("; node = s1                  ; with --node: the node that runs this balancer", "node = s2")
        cluster = ClusterConfig.from_string(text, SHIPPED)
        on_s2 = make_service(MemoryReactorClock(), cluster, SHIPPED, "s2")
        self.assertEqual(sorted(type(s).__name__ for s in on_s2),
                         sorted([DnsService.__name__, BalancerService.__name__, "SessionServerService", "Collector"] + ["AdminService"] * 3))
        on_s1 = make_service(MemoryReactorClock(), cluster, SHIPPED, "s1", ("dns", "balancer"))
        self.assertEqual(list(on_s1), [])


class StartupErrorTests(SynchronousTestCase):
    """
    Startup problems found only when the services start, through a real
    twistd: one line naming file, section and key, exit status 1.
    """

    def run_twistd(self, text, *args):
        path = os.path.abspath(self.mktemp() + ".ini")
        write(path, text)
        proc = subprocess.run(twistd("--config", path, *args), cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return path, proc.returncode, lines

    def test_port_in_use(self):
        """A session server or DNS address already in use stops startup with one line naming its section and key."""
        (dns,) = free_ports(1)
        text, ports = cluster_ini(names=("s1", "s2"), dns=f"\n[dns]\nlisten = 127.0.0.1:{dns}\nnode = s1\n")
        for roles, kind, port, where in (
            ("server", socket.SOCK_STREAM, ports["s1"][0], "[node:s1] http"),
            ("server", socket.SOCK_STREAM, ports["s1"][1], "[node:s1] replication"),
            ("dns", socket.SOCK_DGRAM, dns, "[dns] listen"),
        ):
            held = socket.socket(socket.AF_INET, kind)
            held.bind(("127.0.0.1", port))
            if kind == socket.SOCK_STREAM:
                held.listen(1)
            try:
                path, code, lines = self.run_twistd(text, "--node", "s1", "--roles", roles)
            finally:
                held.close()
            self.assertEqual(
                (code, lines), (1, [f"appliance: {path}: {where}: cannot listen on 127.0.0.1:{port}: Address already in use"])
            )

    def test_threads_for_a_resource(self):
        """threads = yes on a resource application is refused at startup; threads = no starts."""
        text, ports = cluster_ini(names=("s1",), apps="\n[app:counter]\nmount = /counter\nresource = tests.apps:counter\nthreads = yes\n")
        path, code, lines = self.run_twistd(text, "--node", "s1")
        self.assertEqual(code, 1)
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith(f"appliance: {path}: [app:counter] threads: "), lines)
        nodes = RealNodes(self, names=("s1",), apps="\n[app:counter]\nmount = /counter\nresource = tests.apps:counter\nthreads = no\n")
        status, _, body = http("GET", nodes.url("s1", "/counter"))
        self.assertEqual((status, json.loads(body)["count"]), (200, 1))

    def test_application_that_cannot_be_imported(self):
        """A wsgi or resource path naming a missing module or attribute stops startup with one line, for a node and for the all-in-one (no restart loop)."""
        for apps, key, problem in (
            ("wsgi = no_such_module.web:app", "wsgi", "ModuleNotFoundError: No module named 'no_such_module'"),
            ("resource = tests.apps:no_such_resource", "resource", "AttributeError: module 'tests.apps' has no attribute 'no_such_resource'"),
        ):
            text, _ = cluster_ini(names=("s1", "s2"), apps=f"\n[app:shop]\nmount = /shop\n{apps}\n")
            for args in (("--node", "s1"), ()):
                path, code, lines = self.run_twistd(text, *args)
                self.assertEqual(
                    (code, lines), (1, [f"appliance: {path}: [app:shop] {key}: cannot import {apps.split(' = ')[1]}: {problem}"]), args
                )
