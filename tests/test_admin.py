"""
The admin listener: its config keys, who may use it (token, basic auth,
loopback without a token), and where each process listens.
"""

from __future__ import annotations

import base64
import json

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from appliance.admin.auth import Guard, local_host, presented
from appliance.admin.listener import AdminService, AdminSite, build_root
from appliance.config import Address, ClusterConfig, ConfigError
from appliance.service import make_service

from .memory_http import exchange, request, responses

BASE = """
[cluster]
name = app.cluster.test
secret = a-long-secret
{cluster}

[dns]
listen = 127.0.0.1:9053
{dns}

[balancer:lb1]
listen = 127.0.0.1:9080
{lb}

[node:s1]
http = 127.0.0.1:9001
replication = 127.0.0.1:9101
machine = m1
rack = r1
{s1}

[node:s2]
http = 127.0.0.1:9002
replication = 127.0.0.1:9102
machine = m2
rack = r2
"""

TOKEN = "a-token-of-16-chars-or-more"


def config(cluster="", dns="", lb="", s1="") -> ClusterConfig:
    return ClusterConfig.from_string(BASE.format(cluster=cluster, dns=dns, lb=lb, s1=s1), "test.ini")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class ConfigTests(SynchronousTestCase):
    def test_addresses(self):
        """admin is read on [cluster], [dns], [balancer:NAME] and [node:NAME]; a bare port means 127.0.0.1."""
        c = config("admin = 9700", "admin = 127.0.0.1:9701", "admin = 127.0.0.2:9710", "admin = [::1]:9721")
        self.assertEqual(
            list(c.admins()),
            [
                ("cluster", Address("127.0.0.1", 9700)),
                ("dns", Address("127.0.0.1", 9701)),
                ("balancer:lb1", Address("127.0.0.2", 9710)),
                ("node:s1", Address("::1", 9721)),
            ],
        )

    def test_absent(self):
        """Without admin keys no admin listener is configured."""
        self.assertEqual(list(config().admins()), [])

    def test_not_loopback_without_token(self):
        """An admin address off loopback without [cluster] admin_token is refused in one line naming it."""
        with self.assertRaises(ConfigError) as e:
            config(s1="admin = 192.0.2.1:9721")
        self.assertEqual(
            str(e.exception),
            "test.ini: [node:s1] admin: 192.0.2.1:9721 is not a loopback address: set [cluster] admin_token to listen there",
        )
        with self.assertRaises(ConfigError) as e:
            config(lb="admin = admin.example:9710")
        self.assertIn("[balancer:lb1] admin:", str(e.exception))

    def test_not_loopback_with_token(self):
        """With a token an admin listener may bind any address."""
        c = config(f"admin_token = {TOKEN}", s1="admin = 0.0.0.0:9721")
        self.assertEqual(c.node("s1").admin, Address("0.0.0.0", 9721))
        self.assertEqual(c.cluster.admin_token, TOKEN)
        self.assertNotIn(TOKEN, repr(c.cluster))

    def test_short_token(self):
        """A token shorter than 16 characters is refused."""
        with self.assertRaises(ConfigError) as e:
            config("admin_token = short")
        self.assertEqual(str(e.exception), "test.ini: [cluster] admin_token: must be at least 16 characters")

    def test_collision(self):
        """An admin address used by another listener is refused, naming the other one."""
        with self.assertRaises(ConfigError) as e:
            config(s1="admin = 127.0.0.1:9080")
        self.assertEqual(
            str(e.exception), "test.ini: [node:s1] admin: 127.0.0.1:9080 is already used by [balancer:lb1] listen"
        )

    def test_listen_error_names_admin(self):
        """An admin address that cannot be listened on is named by section and key."""
        c = config(s1="admin = 9721")
        self.assertEqual(
            str(c.listen_error("127.0.0.1", 9721, "in use")),
            "test.ini: [node:s1] admin: cannot listen on 127.0.0.1:9721: in use",
        )


class GuardTests(SynchronousTestCase):
    def test_presented(self):
        """A bearer token or the password of basic auth is the credential presented."""
        self.assertEqual(presented(b"Bearer abc"), b"abc")
        self.assertEqual(presented(b"bearer  abc "), b"abc")
        self.assertEqual(presented(basic("anyone", "p:w").encode()), b"p:w")
        self.assertIsNone(presented(b"Basic !!!"))
        self.assertIsNone(presented(b"Basic " + base64.b64encode(b"nocolon")))
        self.assertIsNone(presented(b"Digest abc"))
        self.assertIsNone(presented(None))

    def test_token(self):
        """With a token every request needs it, reads too."""
        guard = Guard(b"the-token", b"the-secret")
        self.assertFalse(guard.allows(b"GET", None))
        self.assertFalse(guard.allows(b"GET", b"Bearer the-secret"))
        self.assertTrue(guard.allows(b"GET", b"Bearer the-token"))
        self.assertTrue(guard.allows(b"POST", basic("x", "the-token").encode()))

    def test_no_token(self):
        """Without a token reads are open and operations need the cluster secret."""
        guard = Guard(None, b"the-secret")
        self.assertTrue(guard.allows(b"GET", None))
        self.assertTrue(guard.allows(b"HEAD", None))
        self.assertFalse(guard.allows(b"POST", None))
        self.assertFalse(guard.allows(b"POST", b"Bearer wrong"))
        self.assertTrue(guard.allows(b"POST", b"Bearer the-secret"))

    def test_local_host(self):
        """Only a Host header naming loopback or localhost is local."""
        for host in (b"127.0.0.1:9700", b"localhost", b"LOCALHOST:1", b"[::1]:9700", b"127.0.0.2"):
            self.assertTrue(local_host(host), host)
        for host in (b"evil.example", b"evil.example:9700", b"192.0.2.1", b"", None, b"[2001:db8::1]:80"):
            self.assertFalse(local_host(host), host)


def get(site, path, *headers, method="GET", body=b""):
    [(code, head, payload)] = responses(exchange(site, request(method, path, body, headers)))
    return code, head, payload


class SiteTests(SynchronousTestCase):
    def site(self, cluster: ClusterConfig) -> AdminSite:
        return AdminSite(build_root(MemoryReactorClock(), cluster, "node:s1", []), Guard.of(cluster))

    def test_open_read(self):
        """Without a token a read from localhost is answered; the status names the section."""
        code, head, body = get(self.site(config()), "/status.json")
        self.assertEqual(code, 200)
        self.assertEqual(head[b"content-type"], [b"application/json"])
        self.assertEqual(json.loads(body)["section"], "node:s1")

    def test_rebinding(self):
        """Without a token a request naming another host is refused (DNS rebinding)."""
        raw = b"GET /status.json HTTP/1.1\r\nHost: evil.example\r\n\r\n"
        [(code, _, body)] = responses(exchange(self.site(config()), raw))
        self.assertEqual(code, 403)

    def test_token_required(self):
        """With a token a request without it gets 401 and the basic-auth challenge; with it, 200."""
        site = self.site(config(f"admin_token = {TOKEN}"))
        code, head, _ = get(site, "/status.json")
        self.assertEqual(code, 401)
        self.assertEqual(head[b"www-authenticate"], [b'Basic realm="appliance admin"'])
        self.assertEqual(get(site, "/status.json", "Authorization: Bearer wrong-token-xxxxxxx")[0], 401)
        self.assertEqual(get(site, "/status.json", f"Authorization: Bearer {TOKEN}")[0], 200)
        self.assertEqual(get(site, "/status.json", f"Authorization: {basic('ops', TOKEN)}")[0], 200)

    def test_operations_need_json(self):
        """A POST with the right credential but no JSON content type gets 415 (no form posts across sites)."""
        site = self.site(config())
        code, _, _ = get(site, "/", "Authorization: Bearer a-long-secret", method="POST")
        self.assertEqual(code, 415)
        code, _, _ = get(site, "/", "Content-Type: application/json", method="POST")
        self.assertEqual(code, 401)

    def test_unknown(self):
        """An unknown path is a JSON 404."""
        code, _, body = get(self.site(config()), "/nothing")
        self.assertEqual(code, 404)
        self.assertIn("error", json.loads(body))

    def test_mount(self):
        """Another module mounts a child on the root, behind the same guard, and sees the services."""
        from twisted.web.static import Data

        cluster = config(f"admin_token = {TOKEN}")
        marker = object()
        root = build_root(MemoryReactorClock(), cluster, "node:s1", [marker])
        self.assertEqual(root.services, [marker])
        root.putChild(b"extra", Data(b"mounted", "text/plain"))
        site = AdminSite(root, Guard.of(cluster))
        self.assertEqual(get(site, "/extra")[0], 401)
        code, _, body = get(site, "/extra", f"Authorization: Bearer {TOKEN}")
        self.assertEqual((code, body), (200, b"mounted"))


class ProcessTests(SynchronousTestCase):
    def admins(self, top):
        return {s.root.section: (s.address, [type(x).__name__ for x in s.root.services], s.reuse_port)
                for s in top if isinstance(s, AdminService)}

    def test_all_in_one(self):
        """The all-in-one supervisor listens for [cluster], [dns] and its balancers; the node's is its child's."""
        c = config("admin = 9700", "admin = 9701", "admin = 9710", "admin = 9721")
        top = make_service(MemoryReactorClock(), c, "test.ini")
        self.assertEqual(
            self.admins(top),
            {
                "cluster": (Address("127.0.0.1", 9700), [], False),
                "dns": (Address("127.0.0.1", 9701), ["DnsService"], False),
                "balancer:lb1": (Address("127.0.0.1", 9710), ["BalancerService"], False),
            },
        )

    def test_node(self):
        """A --node process listens for its node with the session server and its collector policy (metrics) as its services."""
        c = config("admin = 9700", "admin = 9701", "admin = 9710", "admin = 9721")
        top = make_service(MemoryReactorClock(), c, "test.ini", node="s1", roles=("server",))
        self.assertEqual(self.admins(top), {"node:s1": (Address("127.0.0.1", 9721), ["SessionServerService", "Collector"], False)})

    def test_section_processes(self):
        """Each process of a multi-process section shares its admin address, like its listen address."""
        c = config(lb="admin = 9710\nprocesses = 2")
        top = make_service(MemoryReactorClock(), c, "test.ini", section="balancer:lb1")
        self.assertEqual(self.admins(top), {"balancer:lb1": (Address("127.0.0.1", 9710), ["BalancerService"], True)})

    def test_listens(self):
        """Started, the admin service listens on its address with the admin site; stopped, it closes."""
        reactor = MemoryReactorClock()
        admin = AdminService(reactor, config(), "cluster", Address("127.0.0.1", 9700), [])
        admin.startService()
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((interface, port, type(factory)), ("127.0.0.1", 9700, AdminSite))
        admin.stopService()
        self.assertTrue(reactor.getDelayedCalls() == [] and admin.port is None)

    def test_unconfigured(self):
        """A section without admin has no admin listener."""
        self.assertEqual(self.admins(make_service(MemoryReactorClock(), config(), "test.ini", node="s1", roles=("server",))), {})


class ShippedTests(SynchronousTestCase):
    def test_shipped(self):
        """The shipped config gives every process an admin listener on loopback, documented ports."""
        import os

        from .helpers import ROOT

        c = ClusterConfig.from_path(os.path.join(ROOT, "etc", "cluster.ini"))
        self.assertEqual(
            {section: address.port for section, address in c.admins()},
            {"cluster": 8700, "dns": 8701, "balancer:lb1": 8710, "node:s1": 8721, "node:s2": 8722, "node:s3": 8723},
        )
        self.assertTrue(all(a.host == "127.0.0.1" for _, a in c.admins()))


class ReloadTests(SynchronousTestCase):
    def setUp(self):
        import os

        self.path = os.path.abspath(self.mktemp())
        self.text = BASE.format(cluster="", dns="", lb="", s1="admin = 9721")
        with open(self.path, "w") as f:
            f.write(self.text)
        self.cluster = ClusterConfig.from_path(self.path)
        self.root = build_root(MemoryReactorClock(), self.cluster, "node:s1", [])
        self.site = AdminSite(self.root, Guard.of(self.cluster))

    def post(self):
        code, _, body = get(self.site, "/reload", "Content-Type: application/json",
                            "Authorization: Bearer a-long-secret", method="POST", body=b"{}")
        return code, json.loads(body)

    def test_no_reloader(self):
        """A process without a reloader says so (501) rather than pretending."""
        self.root.process = object()
        self.assertEqual(self.post()[0], 501)

    def test_reload(self):
        """The process's reloader re-reads the file: what changed, or the line that refused the edit (409)."""
        from appliance.reload import Reloader
        from appliance.service import ProcessServices

        applied = []
        process = ProcessServices(self.cluster)
        process.reloader = Reloader(self.cluster, ClusterConfig.from_path, lambda new, changes: applied.append(changes))
        self.root.process = process
        with open(self.path, "w") as f:
            f.write(self.text.replace("[cluster]\n", "[cluster]\nmax_sessions = 7\n", 1))
        code, answer = self.post()
        self.assertEqual((code, answer["reloaded"]), (200, "tunables: [cluster] max_sessions"))
        self.assertEqual(len(applied), 1)
        with open(self.path, "w") as f:
            f.write(self.text.replace("secret = a-long-secret", "secret = another-secret"))
        code, answer = self.post()
        self.assertEqual(code, 409)
        self.assertEqual(answer["error"], f"{self.path}: [cluster] secret: cannot change while running: restart to change it")


class StartupTests(SynchronousTestCase):
    def test_refused_without_token(self):
        """twistd appliance will not start with an admin address off loopback and no token: one line, exit 1."""
        import os
        import subprocess

        from .helpers import ROOT, cluster_ini, free_ports, twistd, write

        port, = free_ports(1)
        text, _ = cluster_ini(names=("s1", "s2"))
        text = text.replace("[node:s1]\n", f"[node:s1]\nadmin = 0.0.0.0:{port}\n", 1)
        path = write(os.path.abspath(self.mktemp()) + ".ini", text)
        done = subprocess.run(twistd("--config", path, "--node", "s1"), cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 1)
        self.assertEqual(
            done.stderr,
            f"appliance: {path}: [node:s1] admin: 0.0.0.0:{port} is not a loopback address:"
            " set [cluster] admin_token to listen there\n",
        )
