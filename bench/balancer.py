"""
Benchmark the balancer against HAProxy in front of the same backend.

    python3 bench/balancer.py [--duration 5] [--rounds 3] [--connections 32]

Everything runs on 127.0.0.1 with free ports: a small raw-protocol backend
(a child process that sets the session cookie), our balancer (child
process, plugin mode, the request's cookie naming the backend) and HAProxy
(nbthread 1, keep-alive, http-reuse always).  C{wrk -t1 -cN} measures the
three in alternating rounds; then each is measured again at half of our
balancer's best rate (a fixed rate per connection, set with a wrk Lua
delay, random so that arrivals are spread) for the p99 latency added.  Every child is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from proc import cpu_seconds  # bench/ is on sys.path when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SID = "AAAAAAAAAAAAAAAAAAAAAA"
COOKIE = f"APPSESSION={SID}!b1!"


def serve_backend(port: int) -> None:
    """
    A minimal keep-alive HTTP server: every request (GET, or a body with
    Content-Length) gets a small 200 with the session cookie.
    """
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    body = b"x" * 64 + b"\n"
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Set-Cookie: APPSESSION=" % len(body)
        + SID.encode()
        + b"!b1!; Path=/; HttpOnly; SameSite=Lax\r\n\r\n"
        + body
    )

    class Backend(Protocol):
        buf = b""
        skip = 0

        def dataReceived(self, data: bytes) -> None:
            buf = self.buf + data if self.buf else data
            out = []
            while True:
                if self.skip:
                    n = min(self.skip, len(buf))
                    buf = buf[n:]
                    self.skip -= n
                    if self.skip:
                        break
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower()
                buf = buf[end + 4 :]
                i = head.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = head.find(b"\r\n", i + 2)
                    self.skip = int(head[i + 17 : j if j > 0 else None])
                out.append(response)
            self.buf = buf
            if out:
                self.transport.write(b"".join(out))

    f = Factory.forProtocol(Backend)
    f.noisy = False
    reactor.listenTCP(port, f, interface="127.0.0.1", backlog=1024)
    reactor.run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, deadline: float = 10.0) -> None:
    """
    Until an HTTP request on C{port} gets a status line (bounded).
    """
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /_appliance/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered HTTP on port {port}")


def start(args: List[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wrk(port: int, duration: int, connections: int, script: Optional[str] = None) -> Optional[Tuple[float, float, int]]:
    """
    Requests per second, p99 latency (ms) and requests completed of one
    wrk run; C{None} when wrk printed no result (it happens on a
    overloaded machine), so that one bad run does not lose the others.
    """
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Cookie: {COOKIE}"]
    if script:
        cmd += ["-s", script]
    cmd.append(f"http://127.0.0.1:{port}/")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30)
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"  wrk timed out on port {port}\n")
        return None
    out = proc.stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    total = re.search(r"^\s*(\d+) requests in", out, re.M)
    if rate is None or m is None or total is None:
        sys.stderr.write(f"  wrk gave no result on port {port}: {(out + proc.stderr)[-500:]}\n")
        return None
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        sys.stderr.write(f"  wrk reported problems on port {port}: {errors.group(0)}\n")
    return float(rate.group(1)), p99, int(total.group(1))


def measure(port: int, pid: Optional[int], duration: int, connections: int, script: Optional[str] = None):
    """
    One wrk run and the proxy's CPU microseconds per request during it:
    (req/s, p99 ms, CPU us/request) or C{None}.
    """
    before = cpu_seconds(pid)
    result = wrk(port, duration, connections, script)
    if result is None:
        return None
    rate, p99, total = result
    cpu = (cpu_seconds(pid) - before) * 1e6 / total if pid is not None and total else 0.0
    return rate, p99, cpu


HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server b1 127.0.0.1:{backend}
"""

CLUSTER_INI = """\
[cluster]
name = bench.test
secret = bench-secret
[balancer:lb]
listen = 127.0.0.1:{port}
mode = plugin
policy = round_robin
[node:b1]
http = 127.0.0.1:{backend}
replication = 127.0.0.1:{replication}
machine = m1
rack = r1
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return 0
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required and not on PATH")
    duration = max(1, min(args.duration, 60))
    rounds = max(1, min(args.rounds, 10))

    tmp = tempfile.mkdtemp(prefix="bench-balancer-")
    backend_port, ours_port, haproxy_port = free_port(), free_port(), free_port()
    procs: Dict[str, subprocess.Popen] = {}
    try:
        procs["backend"] = start([sys.executable, os.path.abspath(__file__), "--serve-backend", str(backend_port)])
        wait_http(backend_port)
        ini = os.path.join(tmp, "cluster.ini")
        with open(ini, "w") as f:
            f.write(CLUSTER_INI.format(port=ours_port, backend=backend_port, replication=free_port()))
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs["ours"] = start([sys.executable, "-m", "appliance.balancer", ini, "lb", "-q"], cwd=ROOT, env=env)
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(port=haproxy_port, backend=backend_port))
        procs["haproxy"] = start(["haproxy", "-db", "-f", cfg])
        wait_http(ours_port)
        wait_http(haproxy_port)

        targets = {"direct": backend_port, "ours": ours_port, "haproxy": haproxy_port}
        pids = {"direct": None, "ours": procs["ours"].pid, "haproxy": procs["haproxy"].pid}
        for name, port in targets.items():  # warm up
            wrk(port, 1, args.connections)
        results: Dict[str, List[Tuple[float, float, float]]] = {n: [] for n in targets}
        for r in range(rounds):
            for name, port in targets.items():
                got = measure(port, pids[name], duration, args.connections)
                if got is None:
                    continue
                results[name].append(got)
                rate, lat, cpu = got
                print(f"round {r + 1} {name:8s} {rate:9.0f} req/s  p99 {lat:7.2f} ms  cpu {cpu:5.1f} us/req", flush=True)
        if not all(results.values()):
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"{name} exited: {proc.stderr.read().decode(errors='replace')[-3000:]}")
            raise SystemExit("a target never gave a result")

        best = {n: max(v[0] for v in runs) for n, runs in results.items()}
        median = {n: statistics.median(v[0] for v in runs) for n, runs in results.items()}
        p99 = {n: statistics.median(v[1] for v in runs) for n, runs in results.items()}
        cpu = {n: statistics.median(v[2] for v in runs) for n, runs in results.items()}

        # Half of our best rate: each connection waits a random whole number
        # of milliseconds (wrk's timer unit) averaging connections/rate
        # before each request, so arrivals are spread out rather than sent
        # in synchronised bursts.
        half = best["ours"] / 2
        script = os.path.join(tmp, "rate.lua")
        delay_ms = 1000.0 * args.connections / half
        top = max(1, round(2 * delay_ms))
        with open(script, "w") as f:
            f.write(f"math.randomseed(os.time())\nfunction delay()\n  return math.random(0, {top})\nend\n")
        half_runs: Dict[str, List[Tuple[float, float, float]]] = {n: [] for n in targets}
        for r in range(rounds):
            for name, port in targets.items():
                got = measure(port, pids[name], duration, args.connections, script)
                if got is None:
                    continue
                half_runs[name].append(got)
                print(f"half {r + 1} {name:8s} {got[0]:9.0f} req/s  p99 {got[1]:7.2f} ms", flush=True)
        half_results = {
            n: (statistics.median(v[0] for v in runs), statistics.median(v[1] for v in runs)) if runs else (0.0, float("nan"))
            for n, runs in half_runs.items()
        }

        print()
        print(f"wrk -t1 -c{args.connections} -d{duration}s, {rounds} alternating rounds, median of rounds:")
        for name in targets:
            extra = f"  cpu {cpu[name]:5.1f} us/req" if pids[name] is not None else ""
            print(f"  {name:8s} {median[name]:9.0f} req/s (best {best[name]:.0f})  p99 {p99[name]:7.2f} ms{extra}")
        print(f"  ours/haproxy  {median['ours'] / median['haproxy']:.2f}x   (best/best {best['ours'] / best['haproxy']:.2f}x)")
        print(f"  ours/direct   {median['ours'] / median['direct']:.2f}x")
        print(f"  haproxy/direct {median['haproxy'] / median['direct']:.2f}x")
        print(f"  cpu per request ours/haproxy {cpu['ours'] / cpu['haproxy']:.2f}x" if cpu["haproxy"] else "")
        print(f"at about half of our max load (target {half:.0f} req/s; random 0-{top} ms delay before each request), median of rounds:")
        for name in targets:
            rate, lat = half_results[name]
            print(f"  {name:8s} {rate:9.0f} req/s  p99 {lat:7.2f} ms")
        print(f"  p99 added by ours:    {half_results['ours'][1] - half_results['direct'][1]:6.2f} ms")
        print(f"  p99 added by haproxy: {half_results['haproxy'][1] - half_results['direct'][1]:6.2f} ms")
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(f"warning: {name} exited early: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        return 0
    finally:
        for proc in procs.values():
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
