"""
A node's memory under a flood of cookie-less POSTs: growth stops at
max_sessions.

Starts one real session server (`twistd appliance --node s1 --roles server`,
the demo cart in the reactor thread, free loopback port), then sends
cookie-less `POST /cart/items` straight at it over a few pipelined
keep-alive connections, in steps, bounded in count and time.  After each
step it prints the requests answered (200 created a session, 503 refused
one), the node's primaries and its RSS.  The summary compares the peak
RSS up to the step that reached the cap with the RSS over the steps after
it, when every request is refused.

    python3 bench/flood.py [--max-sessions 20000] [--requests 60000] [--seconds 120]
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.proc import rss_kib  # noqa: E402
from tests.helpers import cluster_ini, health, twistd, wait_for  # noqa: E402

REQUEST = (
    b"POST /cart/items HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\nitem=apple"
)


class Connection:
    """
    One keep-alive connection that pipelines the requests queued on it
    (C{request}, C{REQUEST} by default) and counts the status codes of the
    answers; L{answered} sees each answer's status line and headers.
    """

    request = REQUEST

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.out = b""
        self.buffer = b""
        self.pending = 0
        self.codes: dict = {}

    def queue(self, count: int) -> None:
        self.out += self.request * count
        self.pending += count

    def answered(self, code: int, lines) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1

    def readable(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise SystemExit("the server closed a connection")
        self.buffer += data
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.answered(int(lines[0].split()[1]), lines)
            self.pending -= 1
            self.buffer = rest[length:]

    def writable(self) -> None:
        sent = self.sock.send(self.out[: 1 << 16])
        self.out = self.out[sent:]


def run_step(connections, per_connection: int, deadline: float) -> None:
    selector = selectors.DefaultSelector()
    for c in connections:
        c.queue(per_connection)
        selector.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    try:
        while any(c.pending for c in connections):
            if time.monotonic() > deadline:
                raise SystemExit("time bound reached in the middle of a step")
            for key, events in selector.select(timeout=1.0):
                c = key.data
                if events & selectors.EVENT_READ:
                    c.readable()
                if events & selectors.EVENT_WRITE:
                    if c.out:
                        c.writable()
                    else:
                        selector.modify(c.sock, selectors.EVENT_READ, c)
    finally:
        selector.close()


def report(rows, start_rss: int, cap: int) -> None:
    full = [i for i, r in enumerate(rows) if r[3] >= cap]
    if not full:
        print("the cap was not reached: raise --requests or --seconds")
        return
    capped = full[0]
    # RSS moves by a few MiB as the allocator takes and returns arenas, so
    # compare peaks: up to the step that reached the cap, and after it.
    peak_before = max(r[4] for r in rows[: capped + 1])
    created = rows[capped][3]
    print(
        f"up to the cap: {created} sessions, peak RSS {peak_before / 1024:.1f} MiB "
        f"(+{(peak_before - start_rss) / 1024:.1f} MiB, {(peak_before - start_rss) * 1024 / created:.0f} B per session)"
    )
    after = rows[capped + 1 :]
    if not after:
        print("no step after the cap: raise --requests")
        return
    refused = after[-1][2] - rows[capped][2]
    low, high = min(r[4] for r in after), max(r[4] for r in after)
    print(
        f"after the cap: {refused} more requests refused with 503, primaries {after[-1][3]}, "
        f"RSS {low / 1024:.1f}-{high / 1024:.1f} MiB, peak {(high - peak_before) / 1024:+.1f} MiB "
        "against the peak up to the cap"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-sessions", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=60_000, help="at most this many requests in all")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop after this long")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    text, ports = cluster_ini(names=("s1",), extra=f"max_sessions = {args.max_sessions}")
    text = text.replace("wsgi = appliance.demo.cart:app", "wsgi = appliance.demo.cart:app\nthreads = no")
    work = tempfile.mkdtemp(prefix="flood-")
    config = os.path.join(work, "cluster.ini")
    with open(config, "w") as f:
        f.write(text)
    log = open(os.path.join(work, "s1.log"), "wb")
    proc = subprocess.Popen(
        twistd("--config", config, "--node", "s1", "--roles", "server"),
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    http_port = ports["s1"][0]
    deadline = time.monotonic() + args.seconds
    try:
        wait_for(lambda: health(http_port), 30, "the session server")
        pid = health(http_port)["pid"]
        connections = [Connection(http_port) for _ in range(args.connections)]
        per_connection = max(1, args.requests // args.steps // args.connections)
        start_rss = rss_kib(pid)
        print(f"session server pid {pid}, max_sessions {args.max_sessions}, RSS at start {start_rss / 1024:.1f} MiB")
        print(f"{'requests':>9} {'200':>7} {'503':>7} {'primaries':>10} {'RSS MiB':>8} {'s':>6}")
        rows = []
        began = time.monotonic()
        for _ in range(args.steps):
            if time.monotonic() > deadline:
                print("time bound reached")
                break
            run_step(connections, per_connection, deadline)
            codes: dict = {}
            for c in connections:
                for code, n in c.codes.items():
                    codes[code] = codes.get(code, 0) + n
            primaries = health(http_port)["primaries"]
            rss = rss_kib(pid)
            rows.append((sum(codes.values()), codes.get(200, 0), codes.get(503, 0), primaries, rss))
            print(f"{rows[-1][0]:>9} {rows[-1][1]:>7} {rows[-1][2]:>7} {primaries:>10} {rss / 1024:>8.1f} "
                  f"{time.monotonic() - began:>6.1f}")
        report(rows, start_rss, args.max_sessions)
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)
        log.close()


if __name__ == "__main__":
    main()
