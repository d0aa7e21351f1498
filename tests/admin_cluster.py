"""
A running cluster with admin listeners, for the admin, command-line and
browser tests: three session servers as real processes on free loopback
ports, the balancer and the DNS responder in s1's process (``node = s1``),
every section with its own admin address.  No rebalancing: the tests
look at where each session is.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from .helpers import cluster_ini, free_ports, health, http, set_cookie_value, spawn, twistd, wait_for, write

SECRET = "test-secret-123"


class AdminCluster:
    def __init__(self, case, extra: str = "", credential: str = ""):
        """
        C{credential}: the bearer token reads must carry (C{[cluster]
        admin_token}, when C{extra} sets one).
        """
        self.case = case
        self.credential = credential
        lb, dns, *admins = free_ports(2 + 5)
        self.lb_port = lb
        self.admin = dict(zip(["balancer:lb1", "dns", "node:s1", "node:s2", "node:s3"], admins))
        balancer = (f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\nnode = s1\nhealth_interval = 250ms\n"
                    f"admin = {self.admin['balancer:lb1']}\n")
        dns_section = (f"\n[dns]\nlisten = 127.0.0.1:{dns}\nnode = s1\nttl = 1\ncheck_interval = 500ms\n"
                       f"admin = {self.admin['dns']}\n")
        text, self.ports = cluster_ini(extra="rebalance_rate = 0\n" + extra, balancer=balancer, dns=dns_section)
        for name in ("s1", "s2", "s3"):
            text = text.replace(f"[node:{name}]\n", f"[node:{name}]\nadmin = {self.admin['node:' + name]}\n", 1)
        self.dir = os.path.abspath(case.mktemp())
        os.makedirs(self.dir)
        self.config = write(os.path.join(self.dir, "cluster.ini"), text)
        self.procs = {}
        for name in ("s1", "s2", "s3"):
            self.start(name)
        for name in ("s1", "s2", "s3"):
            self.wait_linked(name)
        wait_for(lambda: self.up(), 30, "every admin listener to report up")

    def start(self, name):
        roles = "dns,balancer,server" if name == "s1" else "server"
        argv = twistd("--config", self.config, "--node", name, "--roles", roles)
        self.procs[name] = spawn(self.case, argv, os.path.join(self.dir, f"{name}.log"))

    def wait_linked(self, name):
        others = [n for n in self.ports if n != name]

        def linked():
            h = health(self.ports[name][0])
            return h is not None and h["status"] == "ok" and all(h["peers"].get(o) for o in others)

        wait_for(linked, 60, f"{name} up and linked")

    def up(self) -> bool:
        """
        Every process answers up and the balancer sends to every server.
        """
        view = self.get("balancer:lb1", "/cluster.json")[1]
        lb = [s for s in view["sections"] if s["section"] == "balancer:lb1"][0]
        return all(s["state"] == "up" for s in view["sections"]) and set(lb["servers"].values()) == {"up"}

    def kill(self, name):
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(10)

    def url(self, section, path):
        return f"http://127.0.0.1:{self.admin[section]}{path}"

    def get(self, section, path):
        """
        (code, JSON document) of an admin GET.
        """
        headers = {"Authorization": f"Bearer {self.credential}"} if self.credential else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url(section, path), headers=headers), timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def post(self, section, path, body, credential=None):
        credential = credential or self.credential or SECRET
        request = urllib.request.Request(
            self.url(section, path), data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {credential}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def cart(self, item=None, cookie=None):
        """
        Add C{item} to a cart through the balancer (or read it); returns
        (items, cookie value).
        """
        url = f"http://127.0.0.1:{self.lb_port}/cart" + ("/items" if item else "")
        status, headers, body = http("POST" if item else "GET", url, {"item": item} if item else None,
                                     f"APPSESSION={cookie}" if cookie else None)
        assert status == 200, (status, body)
        answer = json.loads(body)
        return answer if item else answer["items"], set_cookie_value(headers) or cookie
