"""
How long the admin listener takes to answer with many sessions on a node.

    python3 bench/admin.py [--sessions 1000000] [--requests 30]

A session server holding C{--sessions} copies (half its primaries, half
backups of a peer's, of random sizes), put straight into its store in this
process (bench/metrics.py's set-up: a million through HTTP would take far
longer than the measurement), with its admin listener on a real loopback
socket; a client process then asks C{/status.json}, the status page C{/},
C{/cluster.json} (this node's part and the other sections, which have no
admin address here) and C{/metrics}, C{--requests} times each over one
keep-alive connection, and reports the answer times; the same with 1,000
sessions first, side by side.  Target (issue 13): the status and /metrics
<= 50 ms each with 1,000,000 sessions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PATHS = ("/status.json", "/", "/cluster.json", "/metrics")

CLIENT = r"""
import http.client, json, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
paths = sys.argv[3:]
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
times = {p: [] for p in paths}
sizes = {}
for _ in range(count):
    for path in paths:
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        times[path].append(1000.0 * (time.perf_counter() - started))
        assert response.status == 200, (path, response.status, body[:200])
        sizes[path] = len(body)
print(json.dumps({"times": times, "sizes": sizes}))
"""


def _set_up():
    """
    bench/metrics.py, whose services() fills a node's store.
    """
    spec = importlib.util.spec_from_file_location("bench_metrics", os.path.join(ROOT, "bench", "metrics.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def answer_times(sessions: int, requests: int):
    from twisted.internet import protocol, reactor

    from appliance.admin.listener import AdminService

    set_up = _set_up()
    port = free_port()
    set_up.CONFIG = set_up.CONFIG.replace("[node:s1]\n", f"[node:s1]\nadmin = 127.0.0.1:{port}\n", 1)
    built = time.perf_counter()
    server, _, _ = set_up.services(sessions)
    built = time.perf_counter() - built
    assert len(server.node.store) == sessions
    admin = AdminService(reactor, server.cluster, "node:s1", server.cluster.node("s1").admin, [server])
    admin.startService()

    class Client(protocol.ProcessProtocol):
        def __init__(self):
            self.out = b""
            self.err = b""

        def outReceived(self, data):
            self.out += data

        def errReceived(self, data):
            self.err += data

        def processEnded(self, reason):
            admin.stopService()
            reactor.callLater(0, reactor.stop)

    client = Client()
    argv = [sys.executable, "-c", CLIENT, str(port), str(requests), *PATHS]
    reactor.callWhenRunning(reactor.spawnProcess, client, sys.executable, argv, env=dict(os.environ))
    reactor.run()
    if not client.out:
        raise SystemExit(f"the client failed: {client.err.decode(errors='replace')}")
    return json.loads(client.out), built


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--small", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.sessions <= 5_000_000 or not 1 <= args.requests <= 1000:
        parser.error("sessions 1-5,000,000, requests 1-1000")
    if args.small:
        # One measurement per process: the reactor runs once.
        result, built = answer_times(args.sessions, args.requests)
        print(json.dumps({"result": result, "built": built}))
        return 0
    print(f"admin listener benchmark  {time.strftime('%Y-%m-%d %H:%M:%S')}  "
          f"{sys.implementation.name} {sys.version.split()[0]}  cpus {os.cpu_count()}")
    import subprocess

    medians = {}
    for count in (1000, args.sessions):
        done = subprocess.run([sys.executable, __file__, "--small", "--sessions", str(count), "--requests", str(args.requests)],
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        times, sizes = measured["result"]["times"], measured["result"]["sizes"]
        print(f"  {count:>9,} sessions (filled in {measured['built']:.1f} s):")
        for path in PATHS:
            medians[(count, path)] = statistics.median(times[path])
            print(f"    {path:<14} {sizes[path]:>7} bytes  median {statistics.median(times[path]):6.2f} ms"
                  f"  max {max(times[path]):6.2f} ms  over {args.requests}")
    for path in PATHS:
        small, large = medians[(1000, path)], medians[(args.sessions, path)]
        print(f"  {path:<14} {args.sessions:,} / 1,000 sessions: {large / small:.2f}x")
    worst = max(medians[(args.sessions, p)] for p in PATHS)
    verdict = "met" if worst <= 50.0 else "MISSED"
    print(f"  target: each answer <= 50 ms with {args.sessions:,} sessions (median): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
