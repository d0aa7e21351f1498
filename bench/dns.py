"""
Queries per second of the appliance DNS responder, on each runtime, against
NSD (one server process) and dnslib's own threaded DNSServer serving the
same records, measured with dnsperf in one run, alternating servers.

    python3 bench/dns.py [--seconds 10] [--rounds 2] [--runtime python3,.pypy/bin/python]

Each run is `dnsperf -l SECONDS -n 1000000 -c 4 -q OUTSTANDING -t 2` (20 in flight by default: with 200, dnslib's server drops queries and dnsperf stalls on their timeouts, which would flatter the ratio).

Every server runs as a child process on a free 127.0.0.1 port.  Ours is
C{python -m appliance.dns.service} with a generated config: three balancers
on 127.0.0.1-3, kept healthy by tiny HTTP responders in this process, and an
RRL limit high enough not to throttle dnsperf (which queries from one
address).  NSD (Debian C{nsd}, C{server-count: 1}, its RRL off as ours is set not to throttle) serves a zone file with
the same records: the physical anchor for an authoritative responder.
Prints each run, the mean qps of each server, ours/NSD and ours/dnslib.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Tuple
from http.server import BaseHTTPRequestHandler, HTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from appliance.runtime import child_environment  # noqa: E402
NAME = "app.bench.test"
BALANCERS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
#: dnsperf -n: at most this many passes over QUERIES per run (a count bound
#: besides the time bound; far more than 10 s allows).
MAX_RUNS = 1_000_000
QUERIES = [
    f"{NAME} A",
    f"{NAME} A",
    f"{NAME} A",
    f"{NAME} A",
    f"{NAME} AAAA",
    f"_http._tcp.{NAME} SRV",
    f"nothere.{NAME} A",
    f"{NAME} SOA",
]


def free_port() -> int:
    """
    A port free for both TCP and UDP on 127.0.0.1.
    """
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/_appliance/lb-health"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_health(host: str, port: int) -> HTTPServer:
    server = HTTPServer((host, port), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def write_config(directory: str, dns_port: int, lb_port: int, name: str = "cluster.ini") -> str:
    lines = [
        "[cluster]",
        f"name = {NAME}",
        "secret = bench-secret",
        "[dns]",
        f"listen = 127.0.0.1:{dns_port}",
        "ttl = 5",
        "check_interval = 1s",
        "rrl_rate = 100000000",
        "rrl_slip = 2",
    ]
    for i, host in enumerate(BALANCERS, 1):
        lines += [f"[balancer:lb{i}]", f"listen = {host}:{lb_port}"]
    lines += [
        "[node:s1]",
        "http = 127.0.0.1:1",
        "replication = 127.0.0.1:2",
        "machine = m1",
        "rack = r1",
    ]
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


NSD_CONF = """\
server:
    ip-address: 127.0.0.1@{port}
    server-count: 1
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{tmp}"
    database: ""
    pidfile: "{tmp}/nsd.pid"
    xfrdfile: "{tmp}/xfrd.state"
    zonelistfile: "{tmp}/zone.list"
    logfile: "{tmp}/nsd.log"
    verbosity: 0
    hide-version: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: {name}
    zonefile: "{tmp}/{name}.zone"
"""


def start_nsd(tmp: str, port: int) -> subprocess.Popen:
    """
    NSD serving the records ours serves (three A, the SRV set and SOA).
    """
    zone = [f"$ORIGIN {NAME}.", "$TTL 5", f"@ IN SOA ns1.{NAME}. hostmaster.{NAME}. 1 3600 600 86400 5", "@ IN NS ns1",
            "ns1 IN A 127.0.0.1"]
    for i, host in enumerate(BALANCERS, 1):
        zone += [f"@ IN A {host}", f"_http._tcp IN SRV 10 10 8080 lb{i}", f"lb{i} IN A {host}"]
    with open(os.path.join(tmp, f"{NAME}.zone"), "w") as f:
        f.write("\n".join(zone) + "\n")
    conf = os.path.join(tmp, "nsd.conf")
    with open(conf, "w") as f:
        f.write(NSD_CONF.format(port=port, tmp=tmp, name=NAME))
    return subprocess.Popen(["nsd", "-d", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dnslib_server(port: int) -> None:
    """
    Serve the same records with dnslib.server.DNSServer (threaded UDP)
    until killed.
    """
    from dnslib import QTYPE, RCODE, RR, SOA, SRV, A
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    class StaticResolver(BaseResolver):
        def __init__(self):
            self.rotation = 0
            self.soa = SOA(
                f"ns1.{NAME}.", f"hostmaster.{NAME}.", (1, 3600, 600, 86400, 5)
            )

        def resolve(self, request, handler):
            reply = request.reply()
            reply.header.aa = 1
            qname = str(request.q.qname).rstrip(".").lower()
            qtype = request.q.qtype
            self.rotation += 1
            r = self.rotation % len(BALANCERS)
            hosts = BALANCERS[r:] + BALANCERS[:r]
            if qname == NAME and qtype == QTYPE.A:
                for h in hosts:
                    reply.add_answer(RR(request.q.qname, QTYPE.A, ttl=5, rdata=A(h)))
            elif qname == NAME and qtype == QTYPE.SOA:
                reply.add_answer(RR(request.q.qname, QTYPE.SOA, ttl=5, rdata=self.soa))
            elif qname == f"_http._tcp.{NAME}" and qtype == QTYPE.SRV:
                for i, h in enumerate(hosts):
                    target = f"lb{BALANCERS.index(h) + 1}.{NAME}."
                    reply.add_answer(
                        RR(request.q.qname, QTYPE.SRV, ttl=5, rdata=SRV(10, 10, 8080, target))
                    )
                    reply.add_ar(RR(target, QTYPE.A, ttl=5, rdata=A(h)))
            elif qname == NAME:
                reply.add_auth(RR(NAME + ".", QTYPE.SOA, ttl=5, rdata=self.soa))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(RR(NAME + ".", QTYPE.SOA, ttl=5, rdata=self.soa))
            return reply

    quiet = DNSLogger(logf=lambda s: None)  # ours logs nothing per query either
    server = DNSServer(StaticResolver(), port=port, address="127.0.0.1", logger=quiet)
    sys.stdout.write(f"ready 127.0.0.1 {port}\n")
    sys.stdout.flush()
    server.start()


def wait_ready(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """
    Wait (bounded) for the child's "ready" line.
    """
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if readable else ""
    if not line.startswith("ready"):
        raise SystemExit(f"server did not start within {timeout}s: {line!r}")
    # Keep draining stdout so a chatty child never blocks on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()


def wait_answering(port: int, timeout: float = 10.0) -> None:
    """
    Wait until the server answers a query (and, for ours, health checks
    have run) before measuring.
    """
    query = bytes.fromhex("abcd01000001000000000000") + b"".join(
        bytes([len(p)]) + p.encode() for p in NAME.split(".")
    ) + b"\x00\x00\x01\x00\x01"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            s.sendto(query, ("127.0.0.1", port))
            try:
                s.recv(4096)
                return
            except socket.timeout:
                continue
    raise SystemExit(f"no answer on port {port}")


def run_dnsperf(port: int, datafile: str, seconds: int, outstanding: int = 200) -> Tuple[float, int]:
    out = subprocess.run(
        [
            "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", datafile,
            "-l", str(seconds), "-n", str(MAX_RUNS), "-c", "4", "-q", str(outstanding), "-t", "2",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    m = re.search(r"Queries per second:\s+([\d.]+)", out.stdout)
    lost = re.search(r"Queries lost:\s+(\d+)", out.stdout)
    if m is None:
        raise SystemExit(f"dnsperf failed:\n{out.stdout}\n{out.stderr}")
    return float(m.group(1)), int(lost.group(1)) if lost else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="dnsperf -l per run")
    parser.add_argument(
        "--outstanding", type=int, default=20,
        help="dnsperf -q: queries in flight (a server that drops queries stalls dnsperf for -t seconds each)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs of each server")
    parser.add_argument("--runtime", default=sys.executable,
                        help="comma-separated interpreters for our responder (default: this one)")
    parser.add_argument("--dnslib-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dnslib_server:
        dnslib_server(args.dnslib_server)
        return
    for tool, package in (("dnsperf", "dnsperf"), ("nsd", "nsd")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {package})")

    lb_port = free_port()
    healths = [start_health(h, lb_port) for h in BALANCERS]
    procs = []
    results: Dict[str, List[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            # Ours as the supervisor starts it (PyPy's collector step).
            env = child_environment(dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")))
            ports: Dict[str, int] = {}
            for runtime in args.runtime.split(","):
                port = free_port()
                config = write_config(tmp, port, lb_port, name=f"{len(ports)}.ini")
                ours = subprocess.Popen(
                    [runtime, "-m", "appliance.dns.service", config],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
                )
                procs.append(ours)
                wait_ready(ours, 60.0)
                label = "ours-" + implementation(runtime)
                ports[label if label not in ports else f"ours-{runtime}"] = port
            theirs_port, nsd_port = free_port(), free_port()
            theirs = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--dnslib-server", str(theirs_port)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            )
            procs.append(theirs)
            procs.append(start_nsd(tmp, nsd_port))
            wait_ready(theirs)
            ports["nsd"], ports["dnslib"] = nsd_port, theirs_port
            for port in ports.values():
                wait_answering(port)
            time.sleep(1.5)  # let the first health round settle
            datafile = os.path.join(tmp, "queries.txt")
            with open(datafile, "w") as f:
                f.write("\n".join(QUERIES) + "\n")
            for label, port in ports.items():  # warm up (PyPy's JIT too)
                run_dnsperf(port, datafile, 2, args.outstanding)
            results = {label: [] for label in ports}
            for r in range(args.rounds):
                for label, port in ports.items():
                    qps, lost = run_dnsperf(port, datafile, args.seconds, args.outstanding)
                    results[label].append(qps)
                    print(f"round {r + 1} {label:12s} {qps:10.0f} qps  (lost {lost})", flush=True)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
            for h in healths:
                h.shutdown()
    mean = {label: sum(v) / len(v) for label, v in results.items()}
    print(f"dnsperf -c 4 -q {args.outstanding} -l {args.seconds}, mean of {args.rounds} alternating rounds: "
          + ", ".join(f"{label} {qps:.0f} qps" for label, qps in mean.items()))
    for label in mean:
        if label.startswith("ours-"):
            target = 0.5 if "pypy" in label else 0.3
            print(f"  {label}/nsd {mean[label] / mean['nsd']:.2f}x (target >= {target})   "
                  f"{label}/dnslib {mean[label] / mean['dnslib']:.2f}x")


def implementation(runtime: str) -> str:
    out = subprocess.run([runtime, "-c", "import platform; print(platform.python_implementation())"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise SystemExit(f"runtime {runtime} does not run: {out.stderr.strip()[-300:]}")
    return out.stdout.strip().lower()


if __name__ == "__main__":
    main()
