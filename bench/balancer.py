"""
Benchmark the balancer against HAProxy in front of the same backend, on
each runtime, behind several backends, with 1 or more processes.

    python3 bench/balancer.py [--duration 4] [--rounds 3] [--connections 32]
        [--runtime python3,.pypy/bin/python] [--backend own,nginx,cart] [--processes 1,2]
        [--metrics both] [--baseline DIR] [--in-process]

Everything runs on 127.0.0.1 with free ports.  For each backend and each
process count N: the backend, HAProxy (C{nbthread N}, keep-alive,
http-reuse always) and our balancer under each runtime (plugin mode,
C{twistd appliance --roles balancer} with C{processes = N}: one process, or
a supervisor and N children sharing the port) are measured with C{wrk
-tT -cC} in alternating rounds, every request carrying a session cookie;
then, for each runtime, the backend, HAProxy and ours again at half of that
runtime's best rate (a random per-request delay in a wrk Lua script, so
arrivals are spread) for the p99 latency added.  CPU per request is the
user+system time of the proxy's processes (supervisor and children).

Backends: C{own}, a minimal raw-protocol server (C{--backend-runtime}) setting
the session cookie; C{nginx} (Debian nginx-light, one worker) answering a
fixed 28-byte JSON body; C{cart}, a real session server (single node, the
demo cart, C{--backend-runtime}) answering C{GET /cart} for 200 pre-created sessions whose
cookies the Lua script rotates.  Every child is stopped at the end.

With C{--metrics both}, ours runs twice on each runtime in the same rounds,
as shipped and with C{[cluster] metrics = no} (C{ours-LABEL-nometrics}),
and the report gives their ratio: what the counting behind /metrics costs.
With C{--baseline DIR} (a checkout of an earlier version), that version's
balancer runs beside ours on each runtime in the same rounds, and the
report gives ours against it.
C{--in-process} measures only the balancer's Python per request, on the
interpreter running the bench, with fake transports (no sockets, no
reactor) and each backend's answer: steadier than any HTTP run here.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from appliance.runtime import child_environment  # noqa: E402
from bench.proc import cpu_seconds  # noqa: E402
from tests.helpers import children_of  # noqa: E402
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


def wrk(port: int, duration: int, connections: int, threads: int, script: str) -> Optional[Tuple[float, float, int]]:
    """
    Requests per second, p99 latency (ms) and requests completed of one
    wrk run; C{None} when wrk printed no result (it happens on a
    overloaded machine), so that one bad run does not lose the others.
    """
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script]
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


HAPROXY_CFG = """\
global
    nbthread {threads}
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

NGINX_CFG = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        keepalive_requests 1000000;
        location / {{
            default_type application/json;
            return 200 '{{"items": ["apple", "pear"]}}';
        }}
    }}
}}
"""

# One file for our balancer and, behind it, the cart's session server.
CLUSTER_INI = """\
[cluster]
name = bench.test
secret = bench-secret-123
cookie = APPSESSION
session_timeout = 30m
[app:cart]
mount = /cart
wsgi = appliance.demo.cart:app
[balancer:lb]
listen = 127.0.0.1:{port}
mode = plugin
policy = round_robin
processes = {processes}
[node:b1]
http = 127.0.0.1:{backend}
replication = 127.0.0.1:{replication}
machine = m1
rack = r1
"""

TWISTD = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "appliance"]

CART_SESSIONS = 200

COOKIE_LUA = """\
local cookies = {{{cookies}}}
local n = #cookies
local i = 0
{delay}
request = function()
  i = i + 1
  return wrk.format("GET", "{path}", {{["Cookie"] = cookies[(i % n) + 1]}})
end
"""

DELAY_LUA = """\
math.randomseed(os.time())
function delay()
  return math.random(0, {top})
end
"""


def lua(path: str, cookies: List[str], url_path: str, top: Optional[int]) -> str:
    """
    A wrk script: requests to C{url_path} rotating C{cookies}, each after
    a random 0..C{top} ms delay when C{top} is given.
    """
    with open(path, "w") as f:
        f.write(COOKIE_LUA.format(
            cookies=", ".join('"%s"' % c for c in cookies), path=url_path,
            delay=DELAY_LUA.format(top=top) if top is not None else "",
        ))
    return path


class Backend:
    """
    One backend: the processes it runs, the path and cookies of its load.
    """

    def __init__(self, kind: str, port: int, procs: List[subprocess.Popen], path: str, cookies: List[str]):
        self.kind, self.port, self.procs, self.path, self.cookies = kind, port, procs, path, cookies


def start_backend(kind: str, tmp: str, ini_for, port: int, python: str) -> Backend:
    if kind == "own":
        proc = start([python, os.path.abspath(__file__), "--serve-backend", str(port)], cwd=ROOT)
        wait_http(port)
        return Backend(kind, port, [proc], "/", [COOKIE])
    if kind == "nginx":
        cfg = os.path.join(tmp, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(NGINX_CFG.format(tmp=tmp, port=port))
        proc = start(["nginx", "-c", cfg, "-p", tmp + "/"])
        wait_http(port)
        return Backend(kind, port, [proc], "/", [COOKIE])
    if kind == "cart":
        from replication import create_sessions

        ini = ini_for(1)
        proc = start([python, *TWISTD, "--config", ini, "--node", "b1", "--roles", "server"], cwd=ROOT, env=child_environment(os.environ))
        wait_http(port, 30.0)
        cookies = create_sessions(port, CART_SESSIONS, workers=4)
        return Backend(kind, port, [proc], "/cart", cookies)
    raise SystemExit(f"unknown backend {kind!r}: own, nginx or cart")


def pids_of(proc: subprocess.Popen) -> List[int]:
    """
    A proxy's processes: itself and its children (a supervisor's balancers).
    """
    return [proc.pid] + children_of(proc.pid)


def wait_children(proc: subprocess.Popen, count: int, deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while len(children_of(proc.pid)) < count:
        if time.monotonic() > end or proc.poll() is not None:
            raise SystemExit(f"{count} balancer processes did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        time.sleep(0.05)


def measure(port: int, pids: List[int], duration: int, connections: int, threads: int, script: str):
    """
    One wrk run and the proxy's CPU microseconds per request during it:
    (req/s, p99 ms, CPU us/request) or C{None}.
    """
    before = sum(cpu_seconds(p) for p in pids)
    result = wrk(port, duration, connections, threads, script)
    if result is None:
        return None
    rate, p99, total = result
    cpu = (sum(cpu_seconds(p) for p in pids) - before) * 1e6 / total if pids and total else 0.0
    return rate, p99, cpu


def short(runtime: str) -> str:
    """
    A runtime's label: its implementation and version.
    """
    out = subprocess.run([runtime, "-c", "import platform; print(platform.python_implementation())"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"runtime {runtime} does not run: {out.stderr.strip()[-300:]}")
    return out.stdout.strip().lower()


def one_setup(args, tmp: str, kind: str, processes: int, runtimes: Dict[str, str]) -> Dict[str, object]:
    """
    Measure every target for one backend and process count; print and
    return the summary.
    """
    backend_port, ours_port, haproxy_port, replication = free_port(), free_port(), free_port(), free_port()
    ini = os.path.join(tmp, f"{kind}-{processes}.ini")

    def ini_for(p: int) -> str:
        with open(ini, "w") as f:
            f.write(CLUSTER_INI.format(port=ours_port, backend=backend_port, replication=replication, processes=p))
        return ini

    procs: List[subprocess.Popen] = []
    try:
        backend = start_backend(kind, tmp, ini_for, backend_port, args.backend_runtime)
        procs += backend.procs
        ini_for(processes)
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(threads=processes, port=haproxy_port, backend=backend_port))
        haproxy = start(["haproxy", "-db", "-f", cfg])
        procs.append(haproxy)
        targets: Dict[str, Tuple[int, List[int]]] = {"direct": (backend_port, []), "haproxy": (haproxy_port, [])}
        ours_procs = {}
        # (suffix, checkout, metrics): as shipped, without metrics, the code of --baseline.
        variants = [("", ROOT, True)]
        if args.metrics == "both":
            variants.append(("-nometrics", ROOT, False))
        if args.baseline:
            variants.append(("-baseline", args.baseline, True))
        for label, runtime in runtimes.items():
            for variant, checkout, metrics in variants:
                port = free_port()
                with open(ini) as f:
                    text = f.read().replace(f"listen = 127.0.0.1:{ours_port}", f"listen = 127.0.0.1:{port}")
                if not metrics:
                    text = text.replace("[cluster]\n", "[cluster]\nmetrics = no\n", 1)
                path = os.path.join(tmp, f"{kind}-{processes}-{label}{variant}.ini")
                with open(path, "w") as f:
                    f.write(text)
                proc = start([runtime, *TWISTD, "--config", path, "--roles", "balancer"], cwd=checkout, env=child_environment(os.environ))
                procs.append(proc)
                ours_procs[label + variant] = (port, proc)
        wait_http(haproxy_port)
        for label, (port, proc) in ours_procs.items():
            if processes > 1:
                wait_children(proc, processes)
            wait_http(port, 60.0)
            targets[f"ours-{label}"] = (port, pids_of(proc))
        targets["haproxy"] = (haproxy_port, [haproxy.pid])
        script = lua(os.path.join(tmp, "load.lua"), backend.cookies, backend.path, None)
        for name, (port, _) in targets.items():  # warm up (PyPy's JIT too)
            wrk(port, 2, args.connections, args.threads, script)
        results: Dict[str, List[Tuple[float, float, float]]] = {n: [] for n in targets}
        for r in range(args.rounds):
            # Every other round in reverse order: no target always runs right after the same one.
            order = list(targets.items())
            for name, (port, pids) in order[::-1] if r % 2 else order:
                got = measure(port, pids, args.duration, args.connections, args.threads, script)
                if got is not None:
                    results[name].append(got)
                    print(f"  round {r + 1} {name:14s} {got[0]:9.0f} req/s  p99 {got[1]:7.2f} ms  cpu {got[2]:5.1f} us/req", flush=True)
        if not all(results.values()):
            for proc in procs:
                if proc.poll() is not None:
                    print(f"  {proc.args[:3]} exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
            raise SystemExit("a target never gave a result")
        median = {n: statistics.median(v[0] for v in runs) for n, runs in results.items()}
        cpu = {n: statistics.median(v[2] for v in runs) for n, runs in results.items()}
        half: Dict[str, Dict[str, float]] = {}
        for label in runtimes:
            ours = f"ours-{label}"
            rate = max(v[0] for v in results[ours]) / 2
            top = max(1, round(2 * 1000.0 * args.connections / rate))
            slow = lua(os.path.join(tmp, f"half-{label}.lua"), backend.cookies, backend.path, top)
            runs: Dict[str, List[float]] = {n: [] for n in ("direct", "haproxy", ours)}
            for r in range(args.rounds):
                for name in runs:
                    port, pids = targets[name]
                    got = measure(port, pids, args.duration, args.connections, args.threads, slow)
                    if got is not None:
                        runs[name].append(got[1])
            half[label] = {n: statistics.median(v) if v else float("nan") for n, v in runs.items()}
            half[label]["rate"] = rate
        return {"median": median, "cpu": cpu, "half": half}
    finally:
        for proc in procs:
            stop(proc)


# The answers of the backends, as the balancer reads them in process.
ANSWERS = {
    "own": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "nginx": (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 06:00:00 GMT\r\n"
        b"Content-Type: application/json\r\nContent-Length: 28\r\nConnection: keep-alive\r\n\r\n"
        b'{"items": ["apple", "pear"]}'
    ),
}


def request_cost(metrics: bool, requests: int, answer: str = "own") -> float:
    """
    CPU microseconds per request through the balancer's protocols in
    process (a memory reactor and string transports, one kept-alive
    server connection), with C{[cluster] metrics} as given and the
    C{answer} of one of L{ANSWERS}: the work the HTTP runs measure,
    without the kernel, the reactor and their noise.
    """
    sys.path.insert(0, ROOT)
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from appliance.balancer.frontend import FrontendFactory
    from appliance.balancer.service import Balancer
    from appliance.config import ClusterConfig

    text = CLUSTER_INI.format(port=8080, backend=9001, replication=9101, processes=1)
    if not metrics:
        text = text.replace("[cluster]\n", "[cluster]\nmetrics = no\n", 1)
    cluster = ClusterConfig.from_string(text)
    reactor = MemoryReactorClock()
    balancer = Balancer(reactor, cluster, cluster.balancers[0])
    client = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    front = FrontendFactory(balancer, False).buildProtocol(None)
    front.makeConnection(client)
    request = f"GET /cart HTTP/1.1\r\nHost: x\r\nCookie: {COOKIE}\r\n\r\n".encode("ascii")
    response = ANSWERS[answer]
    front.dataReceived(request)
    server = reactor.tcpClients[-1][2].buildProtocol(None)
    wire = StringTransport()
    server.makeConnection(wire)
    server.dataReceived(response)
    started = time.process_time()
    for _ in range(requests):
        front.dataReceived(request)
        server.dataReceived(response)
        client.clear()
        wire.clear()
    return 1e6 * (time.process_time() - started) / requests


def metrics_cost(rounds: int, requests: int = 10000) -> Dict[str, float]:
    """
    L{request_cost} with metrics on and off in alternating rounds (which
    goes first alternates too); the median of each.
    """
    on: List[float] = []
    off: List[float] = []
    for i in range(rounds):
        for counting in (True, False) if i % 2 else (False, True):
            (on if counting else off).append(request_cost(counting, requests))
    return {"on": statistics.median(on), "off": statistics.median(off)}


def report(kind: str, processes: int, summary, runtimes: Dict[str, str], args) -> None:
    median, cpu, half = summary["median"], summary["cpu"], summary["half"]
    print(f"backend {kind}, {processes} process(es) / haproxy nbthread {processes}, "
          f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, median of {args.rounds} alternating rounds:")
    for name in median:
        extra = f"  cpu {cpu[name]:5.1f} us/req" if name != "direct" else ""
        print(f"  {name:14s} {median[name]:9.0f} req/s{extra}")
    for label in runtimes:
        ours = f"ours-{label}"
        h = half[label]
        print(f"  {ours}/haproxy {median[ours] / median['haproxy']:.2f}x   "
              f"cpu/request {cpu[ours] / cpu['haproxy']:.2f}x haproxy's   "
              f"p99 added at {h['rate']:.0f} req/s: ours {h[ours] - h['direct']:.2f} ms, haproxy {h['haproxy'] - h['direct']:.2f} ms")
    print(f"  haproxy/direct {median['haproxy'] / median['direct']:.2f}x", flush=True)
    for label in runtimes:
        ours, before = f"ours-{label}", f"ours-{label}-baseline"
        if before in median:
            print(f"  against the code before: {ours}/{before} {median[ours] / median[before]:.2f}x   "
                  f"cpu/request {cpu[ours]:.1f} vs {cpu[before]:.1f} us", flush=True)
    for label in runtimes:
        ours, off = f"ours-{label}", f"ours-{label}-nometrics"
        if off in median:
            value = median[ours] / median[off]
            verdict = "met" if value >= 0.97 else f"MISSED by {100 * (1 - value / 0.97):.1f}%"
            print(f"  metrics cost: {ours}/{off} {value:.3f}   target >= 0.97: {verdict}   "
                  f"cpu/request {cpu[ours]:.1f} vs {cpu[off]:.1f} us", flush=True)
    cost = summary.get("metrics_cost")
    if cost:
        added = cost["on"] - cost["off"]
        for label in runtimes:
            if runtimes[label] != sys.executable:
                continue  # measured in process on this interpreter only
            off = f"ours-{label}-nometrics"
            value = cpu[off] / (cpu[off] + added)
            verdict = "met" if value >= 0.97 else "MISSED"
            print(f"  in process ({sys.implementation.name}): metrics on {cost['on']:.2f} us/request, off "
                  f"{cost['off']:.2f}; against {off}'s {cpu[off]:.1f} us CPU per request, "
                  f"on/off = {value:.3f}   target >= 0.97: {verdict}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--runtime", default=sys.executable,
                        help="comma-separated interpreters for our balancer, each with the appliance's "
                             "dependencies installed (default: this one)")
    parser.add_argument("--backend-runtime", default=sys.executable,
                        help="the interpreter of the own and cart backends (default: this one)")
    parser.add_argument("--backend", default="own", help="comma-separated: own, nginx, cart (default own)")
    parser.add_argument("--processes", default="1", help="comma-separated process counts (default 1)")
    parser.add_argument("--metrics", choices=("on", "both"), default="on",
                        help="both: ours also with [cluster] metrics = no, side by side, and their ratio")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="a checkout of an earlier version (git worktree add DIR REV): its balancer runs "
                             "beside ours on each runtime, in the same rounds (ours-LABEL-baseline)")
    parser.add_argument("--in-process", action="store_true",
                        help="only the Python cost per request on this runtime, in process (fake "
                             "transports), behind the own and the nginx answer: median of --rounds")
    parser.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return 0
    if args.in_process:
        request_cost(True, 20000)  # a PyPy JIT warms up
        for answer in ANSWERS:
            costs = [request_cost(True, 20000, answer) for _ in range(max(1, min(args.rounds, 10)))]
            print(f"in process, {answer} answer: {statistics.median(costs):.2f} us/request "
                  f"(best {min(costs):.2f}) on {short(sys.executable)}")
        return 0
    kinds = [k for k in args.backend.split(",") if k]
    for tool in ["wrk", "haproxy"] + (["nginx"] if "nginx" in kinds else []):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required and not on PATH")
    if args.baseline and not os.path.isdir(os.path.join(args.baseline, "appliance")):
        raise SystemExit(f"--baseline {args.baseline}: not a checkout of the appliance")
    args.duration = max(1, min(args.duration, 60))
    args.rounds = max(1, min(args.rounds, 10))
    runtimes: Dict[str, str] = {}
    for runtime in args.runtime.split(","):
        label = short(runtime)
        runtimes[label if label not in runtimes else runtime] = runtime
    tmp = tempfile.mkdtemp(prefix="bench-balancer-")
    try:
        for kind in kinds:
            for processes in [int(p) for p in args.processes.split(",")]:
                print(f"== backend {kind}, {processes} process(es)", flush=True)
                summary = one_setup(args, tmp, kind, processes, runtimes)
                if args.metrics == "both":
                    summary["metrics_cost"] = metrics_cost(16)
                report(kind, processes, summary, runtimes, args)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
