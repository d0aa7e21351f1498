"""
/metrics of real processes after known traffic: two session servers, and
a balancer and the DNS responder in a third process, deployed the
multi-host way, each section with its admin listener; a cart session
written through the balancer and ended, DNS asked, and every process
scraped.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time

from dnslib import DNSRecord
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from .helpers import cluster_ini, free_ports, http, set_cookie_value, spawn, twistd, wait_for, write


def scrape(port: int) -> dict:
    """
    {(name, sorted labels): value} of one admin listener's /metrics.
    """
    status, headers, body = http("GET", f"http://127.0.0.1:{port}/metrics", timeout=5.0)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain"), headers["Content-Type"]
    out = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class MetricsEndToEndTests(SynchronousTestCase):
    def setUp(self):
        lb, dns_port, *admins = free_ports(6)
        self.admin = dict(zip(("s1", "s2", "lb1", "dns"), admins))
        balancer = f"""
[balancer:lb1]
listen = 127.0.0.1:{lb}
node = s1
admin = 127.0.0.1:{self.admin['lb1']}
health_interval = 200ms
health_rise = 1
"""
        dns = f"""
[dns]
listen = 127.0.0.1:{dns_port}
node = s1
admin = 127.0.0.1:{self.admin['dns']}
"""
        text, self.ports = cluster_ini(("s1", "s2"), balancer=balancer, dns=dns)
        for name in ("s1", "s2"):
            text = re.sub(rf"(\[node:{name}\]\n)", rf"\g<1>admin = 127.0.0.1:{self.admin[name]}\n", text)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config = write(os.path.join(workdir, "cluster.ini"), text)
        for name, roles in (("s1", "server"), ("s2", "server"), ("s1", "dns,balancer")):
            log = os.path.join(workdir, f"{name}-{roles}.log")
            spawn(self, twistd("--config", config, "--node", name, "--roles", roles), log)
        self.base = f"http://127.0.0.1:{lb}"
        self.dns_port = dns_port

        def linked(name, other):
            status, _, body = http("GET", f"http://127.0.0.1:{self.ports[name][0]}/_appliance/health", timeout=1.0)
            return status == 200 and json.loads(body)["peers"].get(other)

        wait_for(lambda: linked("s1", "s2") and linked("s2", "s1"), 30, "the servers to link")
        wait_for(lambda: http("GET", self.base + "/_appliance/lb-health", timeout=1.0)[0] == 200, 30, "the balancer")
        wait_for(lambda: scrape(self.admin["lb1"])[
            ("appliance_balancer_server_up", (("balancer", "lb1"), ("server", "s2")))] == 1, 30, "both servers up")

    def send(self, method, path, data=None, cookie=None):
        """
        One request through the balancer, sent again while no server takes
        it (503: a server still settling its lease at startup does nothing
        with it); returns the headers of the 200.
        """
        for _ in range(50):
            status, headers, body = http(method, self.base + path, data, f"APPSESSION={cookie}" if cookie else None)
            if status != 503:
                self.assertEqual(status, 200, body)
                return headers
            self.unserved += 1
            time.sleep(0.1)
        self.fail(f"{method} {path} was never served")

    def test_known_traffic_in_every_process(self):
        """Three writes, a read and a logout through the balancer, and two DNS queries, are counted where they happened."""
        self.unserved = 0
        cookie = None
        for method, path, data in (
            ("POST", "/cart/items", {"item": "apple"}),
            ("POST", "/cart/items", {"item": "pear"}),
            ("POST", "/cart/items", {"item": "plum"}),
            ("GET", "/cart", None),
        ):
            cookie = set_cookie_value(self.send(method, path, data, cookie)) or cookie
        sid, primary, secondary = cookie.split("!")
        self.send("POST", "/cart/logout", {}, cookie)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            for _ in range(2):
                s.sendto(DNSRecord.question("app.cluster.test").pack(), ("127.0.0.1", self.dns_port))
                self.assertEqual(DNSRecord.parse(s.recvfrom(4096)[0]).header.rcode, 0)

        lb = scrape(self.admin["lb1"])
        ok = [v for (name, labels), v in lb.items() if name == "appliance_balancer_requests_total" and ("code", "200") in labels]
        self.assertEqual(sum(ok), 5)
        self.assertEqual(lb[("appliance_balancer_request_seconds_count", (("balancer", "lb1"),))], 5)
        unserved = lb.get(("appliance_balancer_requests_total", (("balancer", "lb1"), ("code", "503"), ("server", "none"))))
        self.assertEqual(unserved or 0, self.unserved)
        dns = scrape(self.admin["dns"])
        self.assertEqual(dns[("appliance_dns_queries_total", (("rcode", "NOERROR"),))], 2)
        self.assertEqual(dns[("appliance_dns_rate_limited_total", ())], 0)

        p = scrape(self.admin[primary])
        node = (("node", primary),)
        self.assertEqual(p[("appliance_sessions_created_total", node)], 1)
        self.assertEqual(p[("appliance_sessions_ended_total", node + (("reason", "invalidated"),))], 1)
        self.assertEqual(p[("appliance_sessions", node + (("role", "primary"),))], 0)
        sent = lambda kind: p[("appliance_replication_records_sent_total", (("kind", kind),) + node + (("peer", secondary),))]
        self.assertEqual((sent("delta"), sent("removal")), (2, 1))
        self.assertGreaterEqual(sent("full"), 1)
        self.assertGreater(p[("appliance_replication_bytes_sent_total", node + (("peer", secondary),))], 0)
        self.assertGreaterEqual(p[("appliance_replication_ack_seconds_count", node)], 4)
        self.assertEqual(p[("appliance_peer_up", node + (("peer", secondary),))], 1)
        self.assertEqual(p[("appliance_replication_unreplicated", node)], 0)
        self.assertNotIn(sid, json.dumps([list(k) for k in p]))

        b = scrape(self.admin[secondary])
        self.assertEqual(b[("appliance_sessions", (("node", secondary), ("role", "backup")))], 0)
        self.assertEqual(b[("appliance_sessions_created_total", (("node", secondary),))], 0)
        self.assertEqual(b[("appliance_session_bytes_count", (("node", secondary),))], 0)
