"""
Graceful drain end to end: real session server processes behind a real
balancer under continuous writes; SIGTERM one server, which hands its
sessions over and exits, restart it, and no client sees an error or loses
an acknowledged write, in each replication mode.  And the all-in-one's
supervisor restarts a drained child as it restarts a crashed one.
"""

from __future__ import annotations

import json
import os
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from .helpers import RealNodes, cluster_ini, free_ports, health, http, set_cookie_value, spawn, twistd, wait_for, write


class Writers:
    """
    C{n} clients, each adding numbered items to its own cart through the
    balancer until stopped; every answer is counted, every acknowledged
    item remembered.
    """

    def __init__(self, base: str, n: int):
        self.base = base
        self.stop = threading.Event()
        self.acked = [[] for _ in range(n)]
        self.cookies = [None] * n
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(n)]

    def start(self):
        for t in self.threads:
            t.start()

    def run(self, i):
        k = 0
        while not self.stop.is_set():
            item = f"c{i}-{k}"
            k += 1
            cookie = f"APPSESSION={self.cookies[i]}" if self.cookies[i] else None
            try:
                status, headers, body = http("POST", self.base + "/cart/items", {"item": item}, cookie, timeout=10.0)
            except Exception as e:
                self.errors.append((item, repr(e)))
                continue
            if status != 200:
                self.errors.append((item, status, body[:200]))
                continue
            self.cookies[i] = set_cookie_value(headers) or self.cookies[i]
            self.acked[i].append(item)
            time.sleep(0.01)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def writes(self) -> int:
        return sum(len(a) for a in self.acked)

    def lost(self):
        """
        Acknowledged items missing from each cart, read back through the
        balancer.
        """
        missing = []
        for i, cookie in enumerate(self.cookies):
            status, _, body = http("GET", self.base + "/cart", cookie=f"APPSESSION={cookie}", timeout=10.0)
            if status != 200:
                missing.append((i, status))
                continue
            items = set(json.loads(body)["items"])
            missing.extend(item for item in self.acked[i] if item not in items)
        return missing


BALANCER = """
[balancer:lb1]
listen = 127.0.0.1:{port}
mode = {mode}
node = s1
health_interval = 200ms
health_rise = 1
down_time = 1s
"""


class DrainEndToEndTests(SynchronousTestCase):
    def cluster(self, replication, mode="plugin"):
        (self.lb,) = free_ports(1)
        extra = "drain_timeout = 15s"
        if replication == "batched":
            extra += "\nbatch_count = 1000\nbatch_interval = 30s"
        self.nodes = RealNodes(self, replication=replication, extra=extra, balancer=BALANCER.format(port=self.lb, mode=mode))
        self.nodes.start("s1", "balancer")
        self.base = f"http://127.0.0.1:{self.lb}"
        wait_for(lambda: http("GET", self.base + "/_appliance/lb-health")[0] == 200, 30, "balancer")

    def drain_and_restart(self, name, writers):
        proc = self.nodes.procs.pop(name)
        before = writers.writes()
        wait_for(lambda: writers.writes() >= before + 20, 30, "writes before the drain")
        held = (health(self.nodes.ports[name][0]) or {}).get("primaries", 0)
        proc.terminate()
        code = proc.wait(30)
        log = self.nodes.log(name)
        # twistd ends a clean stop on a signal with that signal again.
        self.assertIn(code, (0, -15), log[-3000:])
        self.assertIn("drained:", log)
        self.assertNotIn("not handed over", log)
        self.nodes.start(name)
        self.nodes.wait_linked(name)
        after = writers.writes()
        wait_for(lambda: writers.writes() >= after + 20, 30, "writes after the restart")
        return held

    def rolling(self, replication, mode="plugin"):
        self.cluster(replication, mode)
        writers = Writers(self.base, 6)
        writers.start()
        self.addCleanup(writers.finish)
        held = [self.drain_and_restart(name, writers) for name in ("s1", "s2", "s3")]
        writers.finish()
        self.assertGreater(sum(held), 0, "no server held a primary when it was drained")
        self.assertEqual(writers.errors, [])
        self.assertEqual(writers.lost(), [])

    def test_sync(self):
        """Sync mode: SIGTERM each server in turn under writes; each drains and exits 0, no error answer, no acknowledged write lost."""
        self.rolling("sync")

    def test_async(self):
        """Async mode: a rolling restart by SIGTERM under writes has no error answer and loses no acknowledged write."""
        self.rolling("async")

    def test_batched(self):
        """Batched mode (30 s batches): the drain flushes what is queued; no error answer, no acknowledged write lost."""
        self.rolling("batched")

    def test_sticky_balancer(self):
        """A sticky balancer (which knows nothing of secondaries) also sees no error and loses nothing through a rolling restart."""
        self.rolling("sync", mode="sticky")


class AllInOneDrainTests(SynchronousTestCase):
    def test_supervisor_restarts_a_drained_child(self):
        """SIGTERM to one all-in-one child drains it (its sessions live on elsewhere) and the supervisor starts it again."""
        (lb,) = free_ports(1)
        text, ports = cluster_ini(balancer=f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\nhealth_interval = 250ms\n",
                                  extra="drain_timeout = 10s")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = write(os.path.join(directory, "cluster.ini"), text)
        proc = spawn(self, twistd("--config", config), os.path.join(directory, "appliance.log"))
        for name, (http_port, _) in ports.items():
            wait_for(lambda: (health(http_port) or {}).get("status") == "ok"
                     and all((health(http_port) or {}).get("peers", {}).values())
                     and len((health(http_port) or {}).get("peers", {})) == 2, 60, f"{name} up")
        base = f"http://127.0.0.1:{lb}"
        wait_for(lambda: http("GET", base + "/cart")[0] == 200, 30, "the balancer")
        cookie = None
        for item in ("apple", "pear"):
            status, headers, body = http("POST", base + "/cart/items", {"item": item}, f"APPSESSION={cookie}" if cookie else None)
            self.assertEqual(status, 200, body)
            cookie = set_cookie_value(headers) or cookie
        primary = cookie.split("!")[1]
        pid = health(ports[primary][0])["pid"]
        os.kill(pid, 15)
        wait_for(lambda: (health(ports[primary][0]) or {}).get("pid") not in (None, pid), 60, "the supervisor to restart it")
        status, _, body = http("GET", base + "/cart", cookie=f"APPSESSION={cookie}")
        self.assertEqual((status, json.loads(body)["items"]), (200, ["apple", "pear"]))
        self.assertIsNone(proc.poll())
