"""
The Flask adapter's cost against Flask's own signed-cookie session, side by
side in one process, alternating rounds (target: adapter <= 1.15 x cookie).

The same view (read the user, count the visit, keep the last five pages)
runs in two copies of one Flask application: one with Flask's default
C{SecureCookieSessionInterface} (the session decoded and verified from its
cookie, then signed and set again), one with
L{appliance.integrations.flask.ApplianceSessionInterface} (the session
handed in by the server as L{SessionData}, its changes found and committed
to a L{Store} the way a session server's primary does, without the
network or the replication, which C{bench/replication.py} measures).

With C{--http}, the two copies are also served side by side by one real
session server (one node, so nothing is replicated) and loaded in turn by
C{wrk -t1 -c1}, each request carrying its session's cookie: there the
adapter's figure includes the session server's own work for a session
(the lock, the commit), which Flask's cookie session does not need.

    python3 bench/flask_session.py [--requests 20000] [--rounds 5] [--http] [--duration 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask, session  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402

from appliance.core.session import SessionData  # noqa: E402
from appliance.core.store import Store  # noqa: E402
from appliance.integrations.flask import ApplianceSessionInterface  # noqa: E402

SID = "B" * 22


def make_app(appliance: bool) -> Flask:
    app = Flask(f"bench_{'appliance' if appliance else 'cookie'}")
    app.secret_key = "bench-secret-key"
    if appliance:
        app.session_interface = ApplianceSessionInterface()

    @app.get("/")
    def visit():
        user = session.get("user", "anonymous")
        session["visits"] = session.get("visits", 0) + 1
        pages = session.setdefault("pages", [])
        pages.append(f"/item/{session['visits'] % 7}")
        del pages[:-5]
        return f"{user} {session['visits']}"

    return app


def start_response(status, headers, exc_info=None):
    start_response.headers = headers
    return lambda data: None


def run_cookie(app: Flask, environ: dict, n: int) -> float:
    """
    Seconds per request with Flask's cookie session, each request sending
    the cookie the previous answer set.
    """
    cookie = None
    t0 = time.perf_counter()
    for _ in range(n):
        env = dict(environ)
        if cookie is not None:
            env["HTTP_COOKIE"] = cookie
        for chunk in app.wsgi_app(env, start_response):
            pass
        for name, value in start_response.headers:
            if name == "Set-Cookie":
                cookie = value.split(";", 1)[0]
    return (time.perf_counter() - t0) / n


def run_appliance(app: Flask, environ: dict, n: int, store: Store) -> float:
    """
    Seconds per request through the adapter: the server's SessionData in,
    the request's changes committed to the primary's store.
    """
    session = store.get(SID)
    now = 0.0
    t0 = time.perf_counter()
    for _ in range(n):
        env = dict(environ)
        data = env["appliance.session"] = SessionData(session.values, session.timeout, store.timeout)
        for chunk in app.wsgi_app(env, start_response):
            pass
        now += 0.001
        store.commit(session, data.changes(), now)
    return (time.perf_counter() - t0) / n


#: The two copies, for the session server (C{--http}).
cookie_app = make_app(False)
appliance_app = make_app(True)

CONFIG = """
[cluster]
name = bench.test
secret = bench-secret-123
cookie = APPSESSION

[node:s1]
http = 127.0.0.1:{port}
replication = 127.0.0.1:{repl}
machine = m1
rack = r1

[app:cookie]
mount = /cookie
wsgi = bench.flask_session:cookie_app
threads = no

[app:adapter]
mount = /adapter
wsgi = bench.flask_session:appliance_app
threads = no
"""


def over_http(args) -> float:
    """
    Both copies on one session server under wrk, alternating; returns
    the adapter's cost per request over the cookie session's (from req/s).
    """
    import tempfile
    import urllib.request

    from bench.replication import Children, free_port, run_wrk, wait_for

    children = Children()
    workdir = tempfile.mkdtemp(prefix="bench-flask-")
    port, repl = free_port(), free_port()
    config = os.path.join(workdir, "cluster.ini")
    with open(config, "w") as f:
        f.write(CONFIG.format(port=port, repl=repl))
    try:
        server = children.start(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--nodaemon", "--pidfile=",
             "appliance", "--config", config, "--node", "s1", "--roles", "server"],
            os.path.join(workdir, "s1.log"),
        )

        def cookie_of(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return resp.headers["Set-Cookie"].split(";", 1)[0]

        def ready():
            try:
                return cookie_of("/adapter/")
            except OSError:
                return None

        wait_for(ready, 30, "the session server", (server,))
        scripts = {}
        for name in ("cookie", "adapter"):
            scripts[name] = os.path.join(workdir, f"{name}.lua")
            with open(scripts[name], "w") as f:
                f.write(f'wrk.path = "/{name}/"\nwrk.headers["Cookie"] = "{cookie_of(f"/{name}/")}"\n')
        rps = {"cookie": [], "adapter": []}
        for r in range(args.rounds):
            for name in ("cookie", "adapter") if r % 2 == 0 else ("adapter", "cookie"):
                result = run_wrk(port, scripts[name], args.duration, 1, args.duration + 30)
                if result["non2xx"] or result["errors"]:
                    raise RuntimeError(f"{name}: {result['non2xx']} non-2xx, errors {result['errors']!r}")
                rps[name].append(result["rps"])
            print(f"http round {r + 1}: cookie {rps['cookie'][-1]:.0f} req/s, adapter {rps['adapter'][-1]:.0f} req/s", flush=True)
    finally:
        children.kill_all()
    c, a = statistics.median(rps["cookie"]), statistics.median(rps["adapter"])
    print(f"over HTTP: cookie {c:.0f} req/s, adapter {a:.0f} req/s (medians of {args.rounds})")
    return c / a


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="requests per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--http", action="store_true", help="also through a real session server, with wrk")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run (--http)")
    args = parser.parse_args(argv)

    environ = EnvironBuilder(path="/", base_url="http://127.0.0.1:8080/").get_environ()
    store = Store("s1", 1800.0)
    data = SessionData(default_timeout=1800.0)
    data["user"] = "ann"
    store.create(SID, data.changes(), None, 0.0)

    # Warm both up (imports, caches, the cookie's first signing).
    run_cookie(cookie_app, environ, 500)
    run_appliance(appliance_app, environ, 500, store)

    cookie, appliance = [], []
    for r in range(args.rounds):
        first, second = (run_cookie, run_appliance) if r % 2 == 0 else (run_appliance, run_cookie)
        for run in (first, second):
            if run is run_cookie:
                cookie.append(run_cookie(cookie_app, environ, args.requests))
            else:
                appliance.append(run_appliance(appliance_app, environ, args.requests, store))
        print(
            f"round {r + 1}: cookie {cookie[-1] * 1e6:.1f} us/request, appliance {appliance[-1] * 1e6:.1f} us/request",
            flush=True,
        )
    c, a = statistics.median(cookie), statistics.median(appliance)
    ratio = a / c
    print(f"Flask's signed-cookie session: {c * 1e6:.1f} us/request (median of {args.rounds})")
    print(f"appliance adapter:             {a * 1e6:.1f} us/request (median of {args.rounds})")
    print(f"adapter / cookie = {ratio:.3f}  (target <= 1.15: {'met' if ratio <= 1.15 else 'MISSED'})")
    if args.http:
        hosted = over_http(args)
        print(f"over HTTP, cost per request: adapter / cookie = {hosted:.3f}  (target <= 1.15: {'met' if hosted <= 1.15 else 'MISSED'})")
        ratio = max(ratio, hosted)
    return 0 if ratio <= 1.15 else 1


if __name__ == "__main__":
    sys.exit(main())
