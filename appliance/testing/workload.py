"""
The workload: concurrent clients, each with its own cookie (one session
each), adding unique items to their carts through the balancer and reading
them back now and then, recording every request with the time it started
and ended on the monotonic clock (one clock for every namespace of the
machine, so operation times and fault times compare).

    python3 -m appliance.testing.workload run --url http://LB:PORT \\
        --history H.jsonl --cookies C.json [--clients 8 --rate 100 ...]
    python3 -m appliance.testing.workload final --url http://LB:PORT \\
        --cookies C.json --out F.json [--deadline 60]

C{run} goes on until C{--duration} passes or it gets SIGTERM, then lets
each client finish (or time out) its request and writes the cookies.  A
client retries nothing: after an error or a timeout it goes on with its next
operation.  C{final} reads every cart back, retrying each until it answers
200 or the deadline passes.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import signal
import sys
import time
from typing import Dict, List, Optional

from twisted.internet import defer, task
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from .checker import TIMEOUT, encode_items, item_name


def outcome_of(failure) -> str:
    """
    A failed request as an outcome: C{"timeout"} or C{"error:<kind>"}.
    """
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return TIMEOUT
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        inner = reasons[0]
        if inner.check(defer.CancelledError):
            return TIMEOUT
        return f"error:{type(failure.value).__name__}({type(inner.value).__name__})"
    return f"error:{type(failure.value).__name__}"


class Client:
    """
    One browser-like client: its own connection pool and its own session
    cookie, one request at a time.  A C{sticky} client keeps the routing
    hint its session's first cookie gave (it takes a new session's cookie),
    as a client that lost an update (its answer timed out) or an API client
    that stored the cookie once: the hint is only a hint, so an old one must
    be as safe as a new one.
    """

    def __init__(
        self,
        reactor,
        number: int,
        url: str,
        cookie_name: str,
        timeout: float,
        cookie: Optional[str] = None,
        sticky: bool = False,
    ):
        self.reactor = reactor
        self.sticky = sticky
        self.number = number
        self.url = url.rstrip("/")
        self.cookie_name = cookie_name
        self.timeout = timeout
        self.cookie = cookie
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        # Re-sending a request on a new connection would be a retry.
        pool.retryAutomatically = False
        self.pool = pool
        self.agent = Agent(reactor, pool=pool, connectTimeout=timeout)

    def request(self, method: bytes, path: str, form: Optional[bytes] = None) -> defer.Deferred:
        """
        Fires with (outcome, decoded JSON body or None), never fails.
        """
        headers = Headers({b"User-Agent": [b"appliance-lab-workload"]})
        if self.cookie is not None:
            headers.addRawHeader(b"Cookie", f"{self.cookie_name}={self.cookie}".encode("ascii"))
        body = None
        if form is not None:
            headers.addRawHeader(b"Content-Type", b"application/x-www-form-urlencoded")
            body = FileBodyProducer(io.BytesIO(form))
        d = self.agent.request(method, (self.url + path).encode("ascii"), headers, body)
        d.addCallback(lambda response: readBody(response).addCallback(lambda data: (response, data)))
        d.addTimeout(self.timeout, self.reactor)
        d.addCallbacks(self._answered, lambda f: (outcome_of(f), None))
        return d

    def _answered(self, result):
        response, data = result
        for value in response.headers.getRawHeaders(b"set-cookie", []):
            name, _, rest = value.decode("latin-1").partition("=")
            if name.strip() == self.cookie_name:
                self._learn(rest.split(";", 1)[0].strip() or None)
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        return response.code, body

    def _learn(self, cookie: Optional[str]) -> None:
        """
        Take C{cookie}, unless this client is sticky and it only moves the
        routing hint of the session it already has.
        """
        same = cookie is not None and self.cookie is not None and cookie.split("!")[0] == self.cookie.split("!")[0]
        if not (self.sticky and same):
            self.cookie = cookie

    @property
    def route(self) -> Optional[str]:
        """
        The primary and secondary the cookie names now.
        """
        if self.cookie is None:
            return None
        return "!".join(self.cookie.split("!")[1:]) or None

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()


def items_of(kind: str, body) -> Optional[List[str]]:
    if kind == "read" and isinstance(body, dict) and isinstance(body.get("items"), list):
        return body["items"]
    if kind == "add" and isinstance(body, list):
        return body
    return None


class Workload:
    def __init__(self, reactor, args):
        self.reactor = reactor
        self.args = args
        self.stopping = False
        self.random = random.Random(args.seed)
        self.history = open(args.history, "a")
        self.clients = [
            Client(reactor, i, args.url, args.cookie, args.timeout, sticky=i < args.sticky) for i in range(args.clients)
        ]

    def stop(self) -> None:
        self.stopping = True

    def record(self, client: Client, kind: str, seq, start: float, outcome, body) -> None:
        items = items_of(kind, body) if outcome == 200 else None
        r = {
            "client": client.number,
            "kind": kind,
            "seq": seq,
            "start": start,
            "end": time.monotonic(),
            "outcome": outcome,
            "items": encode_items(client.number, items) if items is not None else None,
            "route": client.route,
        }
        self.history.write(json.dumps(r, separators=(",", ":")) + "\n")

    @defer.inlineCallbacks
    def run_client(self, client: Client, until: float):
        interval = len(self.clients) / self.args.rate
        due = time.monotonic() + self.random.uniform(0, interval)
        seq = 0
        done = 0
        while not self.stopping and time.monotonic() < until:
            wait = due - time.monotonic()
            if wait > 0:
                yield task.deferLater(self.reactor, wait, lambda: None)
                if self.stopping:
                    break
            due = max(due + interval, time.monotonic())
            start = time.monotonic()
            if done % (self.args.read_every + 1) == self.args.read_every:
                outcome, body = yield client.request(b"GET", "/cart")
                self.record(client, "read", None, start, outcome, body)
            else:
                seq += 1
                form = f"item={item_name(client.number, seq)}".encode("ascii")
                outcome, body = yield client.request(b"POST", "/cart/items", form)
                self.record(client, "add", seq, start, outcome, body)
            done += 1

    def write_cookies(self) -> None:
        with open(self.args.cookies, "w") as f:
            json.dump({str(c.number): c.cookie for c in self.clients}, f)

    @defer.inlineCallbacks
    def run(self):
        until = time.monotonic() + self.args.duration
        flush = task.LoopingCall(self._flush)
        flush.clock = self.reactor
        flush.start(1.0)
        try:
            yield defer.DeferredList([self.run_client(c, until) for c in self.clients], consumeErrors=False)
        finally:
            flush.stop()
            self._flush()
            self.history.close()
            yield defer.DeferredList([c.close() for c in self.clients])

    def _flush(self) -> None:
        self.history.flush()
        self.write_cookies()


@defer.inlineCallbacks
def final_reads(reactor, args):
    with open(args.cookies) as f:
        cookies: Dict[str, Optional[str]] = json.load(f)
    deadline = time.monotonic() + args.deadline
    results = {}

    @defer.inlineCallbacks
    def read(number: int, cookie: Optional[str]):
        client = Client(reactor, number, args.url, args.cookie, args.timeout, cookie)
        attempts = 0
        outcome = None
        while time.monotonic() < deadline:
            attempts += 1
            outcome, body = yield client.request(b"GET", "/cart")
            items = items_of("read", body) if outcome == 200 else None
            if items is not None:
                results[str(number)] = {"outcome": 200, "attempts": attempts, "items": encode_items(number, items)}
                break
            yield task.deferLater(reactor, 0.2, lambda: None)
        else:
            results[str(number)] = {"outcome": outcome, "attempts": attempts, "items": None}
        yield client.close()

    yield defer.DeferredList([read(int(n), c) for n, c in cookies.items()])
    with open(args.out, "w") as f:
        json.dump(results, f)


def parse(argv: List[str]):
    parser = argparse.ArgumentParser(prog="appliance.testing.workload")
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("run", "final"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True, help="the balancer, http://HOST:PORT")
        p.add_argument("--cookies", required=True, help="JSON file of each client's session cookie")
        p.add_argument("--cookie", default="APPSESSION", help="the session cookie's name")
        p.add_argument("--timeout", type=float, default=3.0, help="per-request timeout, seconds")
        if name == "run":
            p.add_argument("--history", required=True, help="JSON lines, one per request")
            p.add_argument("--clients", type=int, default=8)
            p.add_argument("--sticky", type=int, default=0, help="this many clients keep the first routing hint of their session")
            p.add_argument("--duration", type=float, default=60.0, help="upper bound, seconds")
            p.add_argument("--rate", type=float, default=100.0, help="requests per second, all clients together")
            p.add_argument("--read-every", type=int, default=4, help="a GET after this many adds")
            p.add_argument("--seed", type=int, default=0)
        else:
            p.add_argument("--out", required=True)
            p.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.mode == "run" and (args.clients < 1 or args.rate <= 0 or args.read_every < 1):
        parser.error("--clients and --read-every must be at least 1, --rate positive")
    return args


def main(argv: List[str]) -> None:
    args = parse(argv)
    from twisted.internet import reactor

    if args.mode == "run":
        workload = Workload(reactor, args)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: reactor.callFromThread(workload.stop))
        job = lambda: workload.run()  # noqa: E731
    else:
        job = lambda: final_reads(reactor, args)  # noqa: E731
    failed = []

    def go():
        d = job()
        d.addErrback(failed.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    if failed:
        failed[0].printTraceback(file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
