"""
The replication benchmark: what keeping a session on a secondary costs.

    python3 bench/replication.py                 # 3 rounds x 5 s per configuration
    python3 bench/replication.py --duration 10 --rounds 3 --profile 8
    python3 bench/replication.py --runtime python3,.pypy/bin/python --modes off,sync
    python3 bench/replication.py --modes sync --metrics both --skip-memory
    python3 bench/replication.py --skip-http --skip-memory --pb-batches 4000 --baseline /tmp/old

1. Session-write throughput (C{wrk -t1 -c32} on a pool of pre-created
   sessions of 10 items, about 1 KB of JSON, cookies rotated by the Lua
   script; each session's visits alternate between C{POST /cart/items} and
   C{DELETE /cart/items/<the item added before>}, so carts keep their size
   and the work per request does not grow with the run's throughput;
   C{--cart-items 0}: one item, and every request a POST) against one
   primary session server: replication off (a single-node cluster), sync,
   async and batched (s1 primary, s2 secondary on another machine and
   rack), and a Redis-backed baseline (the same demo app in plain
   twisted.web, a JSON blob per session in a redis-server started here),
   hosted twice: by twisted.web's WSGIResource (C{redis}) and by the
   session server's own one-thread-hop WSGI hosting (C{redis-1hop}), which
   isolates the session storage design from the WSGI container.
   Configurations alternate within each round; every run starts fresh
   processes so carts stay small.
2. Bytes on the wire for a 100 KB session that changes one small key: the
   delta record against the full state (L{appliance.replication.wire}).
2c. With C{--pb-batches N}: the CPU of the PB path alone, per batch of 15
   deltas, in one process per runtime (and per C{--baseline} checkout) with
   the two brokers joined in memory: no sockets, no scheduler, so it holds
   still on a busy machine where the HTTP runs do not.
3. Resident memory per session for 100,000 sessions of ~1 KB JSON: primary
   copies in one L{Store}, backup copies (applied from wire-decoded full
   states) in another, each measured in a fresh child process.

With C{--runtime A,B}, the session servers' modes (off, sync, async,
batched) run under each interpreter in the same rounds: C{sync} is the first,
C{sync@pypy} the same configuration under the second, and the summary gives
each against the first runtime and against C{off} on its own runtime.

With C{--metrics both}, each session-server mode also runs with
C{[cluster] metrics = no} (C{sync-nometrics}) in the same rounds, and the
summary gives their ratio: what the counting behind /metrics costs.

Everything listens on 127.0.0.1 on free ports; every child process is killed
at the end, on error too.  Run from anywhere; the servers run with
/work/main (this checkout) as their working directory so twistd finds the
plugin.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

from proc import cpu_seconds  # bench/ is on sys.path when run as a script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from appliance.runtime import child_environment  # noqa: E402

TWISTD = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
#: Interpreters by label (C{--runtime}); "" is the first, whose modes carry no suffix.
RUNTIMES: Dict[str, str] = {"": sys.executable}
MODES = ("off", "sync", "async", "batched", "redis", "redis-1hop", "baseline")
#: The suffix of a mode run with [cluster] metrics = no.
NOMETRICS = "-nometrics"
SECRET = "bench-secret-123"


# -- processes ------------------------------------------------------------


class Children:
    """
    Every process this benchmark starts, killed (process group and all) by
    L{kill_all}, which runs on any exit path.
    """

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def start(self, argv: List[str], log_path: str, cwd: str = ROOT) -> subprocess.Popen:
        log = open(log_path, "ab")
        try:
            # As the supervisor starts its children (PyPy's collector step).
            proc = subprocess.Popen(
                argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=child_environment(os.environ),
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def kill_all(self) -> None:
        for proc in list(self.procs):
            try:
                self.stop(proc, timeout=3.0)
            except Exception:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str, timeout: float = 2.0) -> Optional[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return None
        return json.loads(body)
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_for(predicate, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{what}: a server exited with status {proc.returncode}")
        if predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


# -- configurations -------------------------------------------------------


def cluster_ini(
    mode: str, nodes: Dict[str, Dict[str, int]], batch_count: int, batch_interval: str, app_threads: str = "no",
    metrics: bool = True,
) -> str:
    replication = "sync" if mode == "off" else mode
    text = textwrap.dedent(
        f"""\
        [cluster]
        name = bench.cluster.test
        secret = {SECRET}
        cookie = APPSESSION
        metrics = {"yes" if metrics else "no"}
        rebalance_rate = 0
        replication = {replication}
        batch_count = {batch_count}
        batch_interval = {batch_interval}
        session_timeout = 30m
        digest_interval = 300s

        [app:cart]
        mount = /cart
        wsgi = appliance.demo.cart:app
        threads = {app_threads}
        """
    )
    for i, (name, ports) in enumerate(nodes.items(), 1):
        text += textwrap.dedent(
            f"""
            [node:{name}]
            http = 127.0.0.1:{ports['http']}
            replication = 127.0.0.1:{ports['replication']}
            machine = m{i}
            rack = r{i}
            """
        )
    return text


class Setup:
    """
    The servers of one run: C{port} takes the load, C{pids} are the
    processes whose CPU is accounted (primary first).
    """

    def __init__(self, mode: str, port: int, pids: Dict[str, int], procs, secondary_port=None):
        self.mode = mode
        self.port = port
        self.pids = pids
        self.procs = procs
        self.secondary_port = secondary_port


def start_appliance(
    children: Children, workdir: str, mode: str, args, run_id: str, python: str = sys.executable, metrics: bool = True
) -> Setup:
    """
    Mode C{baseline} is C{sync} run from another checkout (C{--baseline}):
    the same bench, side by side, against an earlier version of the code.
    """
    names = ["s1"] if mode == "off" else ["s1", "s2"]
    nodes = {n: {"http": free_port(), "replication": free_port()} for n in names}
    conf = os.path.join(workdir, f"{run_id}.ini")
    replication, cwd = ("sync", args.baseline) if mode == "baseline" else (mode, ROOT)
    with open(conf, "w") as f:
        f.write(cluster_ini(replication, nodes, args.batch_count, args.batch_interval, args.app_threads, metrics))
    procs = {}
    for name in names:
        argv = [python] + TWISTD + ["appliance", "--config", conf, "--node", name, "--roles", "server"]
        procs[name] = children.start(argv, os.path.join(workdir, f"{run_id}-{name}.log"), cwd=cwd)
    s1 = nodes["s1"]["http"]

    def ready() -> bool:
        for name in names:
            health = get_json(nodes[name]["http"], "/_appliance/health")
            if health is None or not all(health.get("peers", {}).values()):
                return False
            if health.get("status") != "ok":  # no lease yet: it would answer 503
                return False
            if len(health.get("peers", {})) != len(names) - 1:
                return False
        return True

    wait_for(ready, 20, f"{mode} servers and replication links", procs.values())
    return Setup(
        mode, s1, {n: p.pid for n, p in procs.items()}, list(procs.values()),
        nodes["s2"]["http"] if "s2" in nodes else None,
    )


def start_redis(children: Children, workdir: str, run_id: str, host: str = "wsgiresource") -> Setup:
    redis_port = free_port()
    redis_proc = children.start(
        ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--dir", workdir],
        os.path.join(workdir, f"{run_id}-redis-server.log"),
    )
    wait_for(lambda: _redis_ping(redis_port), 10, "redis-server", [redis_proc])
    port = free_port()
    app_proc = children.start(
        [sys.executable, os.path.join(ROOT, "bench", "redis_session_app.py"), "--port", str(port),
         "--redis-port", str(redis_port), "--container", host],
        os.path.join(workdir, f"{run_id}-redis-app.log"),
    )
    wait_for(lambda: get_json(port, "/_appliance/health") is not None, 20, "redis app", [app_proc, redis_proc])
    return Setup("redis" if host == "wsgiresource" else "redis-1hop", port, {"app": app_proc.pid, "redis": redis_proc.pid}, [app_proc, redis_proc])


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# -- load -----------------------------------------------------------------


#: A padding item: 10 of them make a cart of about 1 KB of JSON.
PAD = "p{}-" + "x" * 90
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def create_sessions(port: int, count: int, workers: int = 8, items: int = 1) -> List[str]:
    """
    C{count} sessions with C{items} items each (a seed, then padding);
    returns their cookies (C{APPSESSION=...}).
    """

    def post(conn, body: str, cookie: Optional[str]) -> Optional[str]:
        conn.request("POST", "/cart/items", body=body, headers=dict(FORM, Cookie=cookie) if cookie else FORM)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"creating a session: HTTP {resp.status}")
        return resp.getheader("Set-Cookie")

    def make(n: int) -> List[str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        out = []
        try:
            for i in range(n):
                set_cookie = post(conn, f"item=seed{i}", None)
                if not set_cookie:
                    raise RuntimeError("creating a session: no Set-Cookie")
                cookie = set_cookie.split(";", 1)[0]
                for j in range(1, items):
                    post(conn, "item=" + PAD.format(j), cookie)
                out.append(cookie)
        finally:
            conn.close()
        return out

    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        return [c for part in pool.map(make, shares) for c in part]


LUA = """\
-- generated by bench/replication.py: POST /cart/items, rotating sessions
local cookies = {%s}
local n = #cookies
local i = 0
local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
request = function()
  i = i + 1
  headers["Cookie"] = cookies[(i %% n) + 1]
  return wrk.format("POST", "/cart/items", headers, "item=i" .. (i %% 97))
end
"""


#: The same writes on carts that keep their size: each session's visits
#: alternate between adding an item and removing the one added before, so
#: the work per request does not grow with the throughput of the run.
LUA_STEADY = """\
-- generated by bench/replication.py: POST /cart/items, then DELETE it, rotating sessions
local cookies = {%s}
local n = #cookies
local i = 0
local headers = {["Content-Type"] = "application/x-www-form-urlencoded"}
local first = true
request = function()
  if first then
    -- wrk may ask for one request it never sends: a read, so that no
    -- POST goes missing and its DELETE answers 404
    first = false
    headers["Cookie"] = cookies[1]
    return wrk.format("GET", "/cart", headers)
  end
  local r = math.floor(i / n)
  headers["Cookie"] = cookies[(i %% n) + 1]
  i = i + 1
  if r %% 2 == 0 then
    return wrk.format("POST", "/cart/items", headers, "item=i" .. (r %% 97))
  end
  return wrk.format("DELETE", "/cart/items/i" .. ((r - 1) %% 97), headers)
end
"""


def write_lua(path: str, cookies: List[str], steady: bool = False) -> None:
    with open(path, "w") as f:
        f.write((LUA_STEADY if steady else LUA) % ",\n".join(json.dumps(c) for c in cookies))


def run_wrk(port: int, script: str, duration: float, connections: int, timeout_s: float) -> dict:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(round(duration)))}s", "--timeout", "5s", "-s", script,
            f"http://127.0.0.1:{port}/cart/items"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise RuntimeError(f"wrk gave no Requests/sec:\n{out}")
    requests = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    return {
        "rps": float(m.group(1)),
        "requests": int(requests.group(1)) if requests else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1).strip() if errors else "",
        "latency_avg": latency.group(1) if latency else "?",
        "raw": out,
    }


def one_run(children: Children, workdir: str, mode: str, args, run_id: str, profile: Optional[str] = None) -> dict:
    metrics = not mode.endswith(NOMETRICS)
    mode, _, runtime = mode[: len(mode) - (0 if metrics else len(NOMETRICS))].partition("@")
    if mode.startswith("redis"):
        setup = start_redis(children, workdir, run_id, "onehop" if mode == "redis-1hop" else "wsgiresource")
    else:
        setup = start_appliance(children, workdir, mode, args, run_id, RUNTIMES[runtime], metrics)
    try:
        cookies = create_sessions(setup.port, args.sessions, items=max(args.cart_items, 1))
        if mode in ("sync", "async", "batched", "baseline"):
            wait_for(
                lambda: (get_json(setup.secondary_port, "/_appliance/health") or {}).get("sessions") == args.sessions,
                30, "sessions to reach the secondary", setup.procs,
            )
        script = os.path.join(workdir, f"{run_id}.lua")
        write_lua(script, cookies, steady=args.cart_items > 0)
        if args.warmup > 0:
            run_wrk(setup.port, script, args.warmup, args.connections, args.warmup + 30)
        spy = None
        if profile:
            spy = start_py_spy(children, workdir, setup.pids[profile], args.duration, run_id)
        before = {name: cpu_seconds(pid) for name, pid in setup.pids.items()}
        result = run_wrk(setup.port, script, args.duration, args.connections, args.duration + 60)
        after = {name: cpu_seconds(pid) for name, pid in setup.pids.items()}
        result["cpu_ms_per_req"] = {
            name: 1000.0 * (after[name] - before[name]) / max(result["requests"], 1) for name in setup.pids
        }
        if spy is not None:
            try:
                spy.wait(args.duration + 30)
            except subprocess.TimeoutExpired:
                pass
            result["profile"] = os.path.join(workdir, f"{run_id}.pyspy.txt")
        if mode in ("sync", "async", "batched", "baseline"):
            health = get_json(setup.port, "/_appliance/health") or {}
            result["unreplicated_at_end"] = health.get("unreplicated")
        sample = cookies[0]
        conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=5)
        conn.request("GET", "/cart", headers={"Cookie": sample})
        resp = conn.getresponse()
        result["sample_cart_items"] = len(json.loads(resp.read()).get("items", [])) if resp.status == 200 else None
        conn.close()
        return result
    finally:
        for proc in setup.procs:
            children.stop(proc)


# -- profiling ------------------------------------------------------------


def start_py_spy(children: Children, workdir: str, pid: int, duration: float, run_id: str):
    exe = shutil.which("py-spy")
    if exe is None:
        print("  (py-spy not found: pip install py-spy; no profile)")
        return None
    out = os.path.join(workdir, f"{run_id}.pyspy.txt")
    return children.start(
        [exe, "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "200",
         "--format", "raw", "--output", out, "--threads", "--nonblocking"],
        os.path.join(workdir, f"{run_id}-py-spy.log"),
    )


_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Inclusive shares worth naming: (label, substring of a frame).
_WATCH = (
    ("HTTP bytes in (HTTPChannel.dataReceived and below)", "HTTPChannel.dataReceived"),
    ("PB bytes in (Banana.dataReceived and below, incl. ack callbacks)", "Banana.dataReceived"),
    ("  of which Replicator._answered (acks release held responses)", "Replicator._answered"),
    ("twisted.web Request.__init__ -> getHost (getsockname syscall)", "Server.getHost"),
    ("twisted.web _parseContentType (email.message parser)", "_parseContentType"),
    ("access log line (HTTPFactory.log)", "HTTPFactory.log"),
    ("WSGI thread hop out (deferToThreadPool)", "deferToThreadPool"),
    ("WSGI thread hop back (callFromThread + waker)", "callFromThread"),
    ("wsgi_environ (hosting.py)", "wsgi_environ"),
    ("SessionNode.open", "SessionNode.open"),
    ("SessionNode.close (commit + queue delta)", "SessionNode.close"),
    ("HeldRequest.finish (hold, commit, release)", "HeldRequest.finish"),
    ("Replicator._flush (batch + PB call)", "Replicator._flush"),
    ("socket send (writeSomeData)", "writeSomeData"),
    ("application (cart.app, in a worker thread)", "app (appliance/demo/cart.py"),
)


def _idle(leaf: str) -> bool:
    return leaf.startswith("Condition.wait") or (
        leaf.startswith("EPollReactor.doPoll") and "_poller.poll" not in leaf and leaf.endswith(":227)")
    )


def summarise_profile(path: str, top: int) -> str:
    """
    Shares of the busy samples (threads blocked in a condition wait or in
    epoll are left out) from py-spy's collapsed stacks: self time by
    function and by line, inclusive time of appliance functions and of
    named hot spots.
    """
    if not os.path.exists(path):
        return "  (no profile written)"
    self_by_line: collections.Counter = collections.Counter()
    self_by_func: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    watch: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = idle = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            thread = "main" if "MainThread" in frames[0] else "worker" if frames[0].startswith("thread") else "?"
            if frames[0].startswith(("thread ", "process ")):
                frames = frames[1:]
            if not frames:
                continue
            if _idle(frames[-1]):
                idle += n
                continue
            total += n
            threads[thread] += n
            m = _FRAME.match(frames[-1])
            self_by_func[f"{m.group('func')} ({_short(m.group('file'))})" if m else frames[-1]] += n
            self_by_line[_short_frame(frames[-1])] += n
            seen = set()
            for fr in frames:
                m = _FRAME.match(fr)
                key = f"{m.group('func')} ({_short(m.group('file'))})" if m else fr
                if key not in seen:
                    seen.add(key)
                    incl[key] += n
            for label, needle in _WATCH:
                if any(needle in fr for fr in frames):
                    watch[label] += n
    if total == 0:
        return "  (empty profile)"

    def pct(n: int) -> str:
        return f"{100.0 * n / total:5.1f}%"

    lines = [f"  busy samples: {total} (idle samples left out: {idle}); "
             + ", ".join(f"{k} thread {pct(v).strip()}" for k, v in threads.most_common())]
    lines.append("  named hot spots (inclusive, % of busy):")
    for label, _ in _WATCH:
        lines.append(f"    {pct(watch[label])}  {label}")
    lines.append("  self time by line (a C call shows as its Python caller's line):")
    for key, n in self_by_line.most_common(top):
        lines.append(f"    {pct(n)}  {key}")
    lines.append("  self time by function:")
    for key, n in self_by_func.most_common(top):
        lines.append(f"    {pct(n)}  {key}")
    lines.append("  inclusive time of appliance functions:")
    shown = 0
    for key, n in incl.most_common():
        if "appliance/" in key and shown < top:
            lines.append(f"    {pct(n)}  {key}")
            shown += 1
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1].lstrip("/")
    if path.startswith(ROOT + "/"):
        return path[len(ROOT) + 1 :]
    return path


def _short_frame(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    where = _short(m.group("file"))
    if m.group("line"):
        where += ":" + m.group("line")
    return f"{m.group('func')} ({where})"


# -- 2. bytes on the wire -------------------------------------------------


def wire_sizes(session_bytes: int = 100 * 1024) -> dict:
    from appliance.core.session import SessionData
    from appliance.core.store import Store
    from appliance.replication import wire

    store = Store("s1", 1800.0)
    data = SessionData()
    # ~100 KB: 100 keys of ~1 KB each plus a small counter key.
    for i in range(100):
        data[f"k{i:03d}"] = {"name": f"item {i}", "blob": "x" * (session_bytes // 100 - 40)}
    data["counter"] = 0
    sid = "A" * 22
    full0 = store.create(sid, data.changes(), "s2", 0.0)
    session = store.get(sid)
    view = SessionData(session.values)
    view["counter"] = view["counter"] + 1
    delta = store.commit(session, view.changes(), 1.0)
    delta_bytes = len(wire.encode([delta]))
    full_bytes = len(wire.encode([session.full(1.0)]))
    return {
        "session_value_bytes": session.size,
        "full": full_bytes,
        "delta": delta_bytes,
        "delta_keys": sorted(delta.set),
        "percent": 100.0 * delta_bytes / full_bytes,
        "full_at_create": len(wire.encode([full0])),
    }


def write_cost(metrics: bool, writes: int) -> float:
    """
    CPU microseconds per session write in process (CPU time, not wall
    time: other load on the machine counts less): the primary's commit, the
    replicator's batch and its answer, the backup's apply, with
    C{[cluster] metrics} as given (the counting the HTTP runs compare,
    without their noise).
    """
    from twisted.internet import defer
    from twisted.internet.task import Clock

    from appliance.config import ClusterConfig
    from appliance.core.session import SessionData
    from appliance.core.store import Store
    from appliance.replication.replicator import Replicator

    nodes = {"s1": {"http": 9001, "replication": 9101}, "s2": {"http": 9002, "replication": 9102}}
    settings = ClusterConfig.from_string(cluster_ini("sync", nodes, 100, "1s", metrics=metrics)).cluster
    primary, backup = Store("s1", 1800.0, counting=metrics), Store("s2", 1800.0, counting=metrics)
    clock = Clock()
    replicator = Replicator(clock, settings, lambda peer, method, chunks: defer.succeed(b"\x00"), lambda: 600)
    sid = "A" * 22
    data = SessionData()
    data["cart"] = ["apple"]
    backup.apply(primary.create(sid, data.changes(), "s2", 0.0), 0.0)
    session = primary.get(sid)
    started = time.process_time()
    for i in range(writes):
        view = SessionData(session.values)
        view["counter"] = i
        delta = primary.commit(session, view.changes(), 1.0)
        replicator.send("s2", delta)
        clock.advance(0)
        backup.apply(delta, 1.0)
    return 1e6 * (time.process_time() - started) / writes


def metrics_cost(rounds: int, writes: int = 4000) -> dict:
    """
    L{write_cost} with metrics on and off in alternating rounds (which
    goes first alternates too); the median of each.
    """
    on, off = [], []
    for i in range(rounds):
        for counting in (True, False) if i % 2 else (False, True):
            (on if counting else off).append(write_cost(counting, writes))
    return {"on": median(on), "off": median(off), "added": median(on) - median(off)}


# -- 2c. the PB path in process ---------------------------------------------

PB_PATH_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from twisted.cred.credentials import UsernamePassword
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.spread import pb
from appliance.core.session import SessionData
from appliance.core.store import Store
from appliance.replication import link, peer, wire

records, batches = int(sys.argv[2]), int(sys.argv[3])

class Handler:
    def __init__(self):
        self.store = Store("s2", 1800.0)
    def peer_seen(self, peer, incarnation):
        pass
    def received(self, peer, incarnation, records):
        return [self.store.apply(r, 5.0, incarnation) for r in records]

clock = Clock()
addr = IPv4Address("TCP", "127.0.0.1", 1)
server = peer.server_factory(Handler(), ("s1", "s2"), "secret", 64 << 20, clock, 10.0).buildProtocol(addr)
factory = pb.PBClientFactory()
factory.protocol = getattr(link, "ClientBroker", pb.Broker)  # what PeerLink connects with
client = factory.buildProtocol(addr)
st, ct = StringTransport(peerAddress=addr), StringTransport(peerAddress=addr)
server.makeConnection(st)
client.makeConnection(ct)

def pump():
    moved = True
    while moved:
        moved = False
        for t, other in ((ct, server), (st, client)):
            data = t.value()
            if data:
                t.clear()
                other.dataReceived(data)
                moved = True

pump()
got = []
factory.login(UsernamePassword(b"s1/1", b"secret")).addBoth(got.append)
pump(); clock.advance(0); pump()
remote = got[0]
primary = Store("s1", 1800.0)
sids = ["%022d" % i for i in range(records)]
for sid in sids:
    data = SessionData()
    data["cart"] = ["seed"] + ["i%d" % (j % 97) for j in range(120)]
    remote.callRemote("replicate", wire.split(wire.encode([primary.create(sid, data.changes(), "s2", 0.0)])))
    pump()

def payload(k):
    out = []
    for sid in sids:
        session = primary.get(sid)
        view = SessionData(session.values)
        cart = view["cart"]
        cart.append("x%d" % (k % 50))
        del cart[1]
        view["cart"] = cart
        out.append(primary.commit(session, view.changes(), 1.0))
    return wire.split(wire.encode(out))

payloads = [payload(k) for k in range(batches)]
now = time.process_time

def run(lo, hi):
    primary_cpu = secondary_cpu = 0.0
    for k in range(lo, hi):
        t0 = now()
        answers = []
        remote.callRemote("replicate", payloads[k]).addBoth(answers.append)
        data = ct.value(); ct.clear()
        t1 = now()
        server.dataReceived(data)
        t2 = now()
        data = st.value(); st.clear()
        client.dataReceived(data)
        t3 = now()
        assert answers and type(answers[0]) is bytes and len(answers[0]) == records, answers
        primary_cpu += (t1 - t0) + (t3 - t2)
        secondary_cpu += t2 - t1
    return {"primary": 1e6 * primary_cpu / (hi - lo), "secondary": 1e6 * secondary_cpu / (hi - lo)}

cold = run(0, 300)
run(300, batches // 2)
print(json.dumps({"bytes": len(b"".join(payloads[0])), "cold": cold, "warm": run(batches // 2, batches)}))
"""


def pb_path_cost(python: str, records: int, batches: int, root: str = ROOT) -> dict:
    """
    CPU microseconds per replication batch of C{records} deltas (~1 KB
    each) on the PB path in one process, in memory (no sockets, no
    scheduler): the primary's call and its answer, the secondary's parse,
    decode, apply and answer; for the first 300 batches (JIT cold on PyPy)
    and for the last half of C{batches}.  C{root}: the checkout measured.
    """
    proc = subprocess.run([python, "-c", PB_PATH_CHILD, root, str(records), str(batches)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"PB path child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- 3. memory per session -------------------------------------------------

MEMORY_CHILD = r"""
import gc, json, os, random, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from appliance.core.session import SessionData
from appliance.core.store import Store
from appliance.replication import wire

role, count = sys.argv[2], int(sys.argv[3])
PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

def session_dict(i, rng):
    # ~1 KB of canonical JSON: a cart, a user record, some preferences.
    return {
        "cart": [{"sku": "SKU-%06d" % rng.randrange(10**6), "qty": rng.randrange(1, 5),
                  "price": rng.randrange(100, 99999) / 100.0} for _ in range(15)],
        "user": {"id": i, "name": "user%07d" % i, "email": "user%07d@example.test" % i,
                 "roles": ["customer"], "locale": "en_GB"},
        "prefs": {"theme": "dark", "currency": "EUR", "newsletter": bool(i % 2),
                  "recent": ["/p/%d" % rng.randrange(10**6) for _ in range(10)]},
        "csrf": "%032x" % rng.getrandbits(128),
        "visits": i % 1000,
    }

def sid_of(i):
    return ("%022d" % i)

rng = random.Random(7)
primary = Store("s1", 1800.0)
backup = Store("s2", 1800.0)
json_bytes = 0
gc.collect()
base = rss()
for i in range(count):
    d = session_dict(i, rng)
    json_bytes += len(json.dumps(d, sort_keys=True, separators=(",", ":")))
    view = SessionData()
    for k, v in d.items():
        view[k] = v
    full = primary.create(sid_of(i), view.changes(), "s2", 0.0)
    if role == "backup":
        # what the secondary holds: decoded from the wire, applied as Full
        (record,) = wire.decode(wire.encode([full]), ("s1", "s2"))
        backup.apply(record, 0.0)
        primary.drop(sid_of(i))
gc.collect()
after = rss()
store = primary if role == "primary" else backup
assert len(store) == count, len(store)
one = next(iter(store.sessions.values()))
parts = {
    "Session object": sys.getsizeof(one),
    "sid str": sys.getsizeof(one.sid),
    "values dict": sys.getsizeof(one.values),
    "value bytes objects": sum(sys.getsizeof(v) for v in one.values.values()),
    "key str objects (not shared)": sum(sys.getsizeof(k) for k in one.values if sys.getrefcount(k) < 50),
}
print(json.dumps({"role": role, "count": count, "rss_bytes": after - base, "json_bytes": json_bytes,
                  "value_bytes": sum(s.size for s in store.sessions.values()), "parts": parts}))
"""


def memory_per_session(count: int) -> dict:
    out = {}
    for role in ("primary", "backup"):
        proc = subprocess.run(
            [sys.executable, "-c", MEMORY_CHILD, ROOT, role, str(count)],
            capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory child ({role}) failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["per_session"] = r["rss_bytes"] / count
        r["json_per_session"] = r["json_bytes"] / count
        r["ratio"] = r["rss_bytes"] / r["json_bytes"]
        out[role] = r
    return out


# -- main -----------------------------------------------------------------


def _interrupt(signum, frame):
    raise KeyboardInterrupt()


def median(xs: List[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Replication benchmark of the appliance.")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk before each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations (default 3)")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions the load rotates over")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--modes", default=",".join(MODES[:-1]), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="a checkout of an earlier version (e.g. git worktree add /tmp/old REV): mode baseline "
                             "runs sync from there, side by side with this one")
    parser.add_argument("--batch-count", type=int, default=100)
    parser.add_argument("--batch-interval", default="1s")
    parser.add_argument(
        "--app-threads", choices=("yes", "no"), default="no",
        help="threads = for the cart on the session servers (default no, as etc/cluster.ini ships it); "
        "the Redis baselines always run the app in worker threads, as their Redis calls block",
    )
    parser.add_argument("--memory-sessions", type=int, default=100_000)
    parser.add_argument("--skip-http", action="store_true", help="only the in-process measurements")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--pb-batches", type=int, default=0, metavar="N",
                        help="also measure the PB path in process: N batches of 15 records per runtime "
                             "(and per --baseline checkout); 4000 take about 20 s on PyPy")
    parser.add_argument("--profile", type=float, default=0.0,
                        help="after the rounds, one more run per --profile-modes of this many seconds under py-spy")
    parser.add_argument("--profile-modes", default="sync", help="modes to profile (default sync)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    parser.add_argument("--metrics", choices=("on", "both"), default="on",
                        help="both: each session-server mode also with [cluster] metrics = no, side by side")
    parser.add_argument("--cart-items", type=int, default=10,
                        help="items per cart (10: about 1 KB of JSON), kept by alternating POST and DELETE; "
                             "0: one item, and every request adds one (carts grow with the run's throughput)")
    parser.add_argument("--runtime", default=sys.executable,
                        help="comma-separated interpreters of the session servers, each with the appliance's "
                             "dependencies installed (default: this one)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            parser.error(f"unknown mode {m!r}")
    first, *others = args.runtime.split(",")
    RUNTIMES[""] = first
    for runtime in others:
        out = subprocess.run([runtime, "-c", "import platform; print(platform.python_implementation().lower())"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            parser.error(f"runtime {runtime} does not run: {out.stderr.strip()[-300:]}")
        RUNTIMES[out.stdout.strip() if out.stdout.strip() not in RUNTIMES else runtime] = runtime
    modes += [f"{m}@{label}" for label in RUNTIMES if label for m in list(modes) if m in ("off", "sync", "async", "batched", "baseline")]
    if args.metrics == "both":
        modes += [m + NOMETRICS for m in list(modes) if m.partition("@")[0] in ("off", "sync", "async", "batched")]
    if "baseline" in modes and not (args.baseline and os.path.isdir(os.path.join(args.baseline, "appliance"))):
        parser.error("mode baseline needs --baseline DIR, a checkout of the appliance")
    if args.rounds < 1 or args.rounds > 20 or not 0.5 <= args.duration <= 120:
        parser.error("rounds 1-20, duration 0.5-120 s")
    if not 0 <= args.cart_items <= 100:
        parser.error("--cart-items 0-100")

    workdir = tempfile.mkdtemp(prefix="bench-replication-")
    children = Children()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    results: Dict[str, List[dict]] = {m: [] for m in modes}
    summary: Dict[str, object] = {}
    print(f"replication benchmark  {time.strftime('%Y-%m-%d %H:%M:%S')}  python {sys.version.split()[0]}  "
          f"runtimes {RUNTIMES}  "
          f"cpus {os.cpu_count()}  work dir {workdir}")
    try:
        if not args.skip_http:
            print(f"\n1. session writes: wrk -t1 -c{args.connections} -d{args.duration:g}s "
                  + (f"POST and DELETE /cart/items, carts of {args.cart_items} items, " if args.cart_items > 0 else "POST /cart/items, ")
                  + f"{args.sessions} sessions, {args.rounds} rounds, batched = {args.batch_count} / {args.batch_interval}")
            for rnd in range(1, args.rounds + 1):
                for mode in modes:
                    r = one_run(children, workdir, mode, args, f"r{rnd}-{mode}")
                    results[mode].append(r)
                    cpu = " ".join(f"{k}={v:.3f}" for k, v in r["cpu_ms_per_req"].items())
                    extra = ""
                    if "unreplicated_at_end" in r:
                        extra = f" unreplicated={r['unreplicated_at_end']}"
                    print(f"  round {rnd} {mode:16s} {r['rps']:9.1f} req/s  latency avg {r['latency_avg']:>8s}  "
                          f"non-2xx {r['non2xx']}  cpu ms/req {cpu}{extra}  cart {r['sample_cart_items']}"
                          + (f"  errors {r['errors']}" if r["errors"] else ""), flush=True)
            med = {m: median([r["rps"] for r in results[m]]) for m in modes}
            summary["rps"] = med
            summary["cpu"] = {
                m: {k: median([r["cpu_ms_per_req"][k] for r in results[m]]) for k in results[m][0]["cpu_ms_per_req"]}
                for m in modes
            }
        print("\n2. bytes on the wire, 100 KB session, one small key changed")
        w = wire_sizes()
        summary["wire"] = w
        print(f"  session values {w['session_value_bytes']} B; full state {w['full']} B; "
              f"delta {w['delta']} B (keys {w['delta_keys']}); delta = {w['percent']:.3f}% of full")
        if args.metrics == "both":
            print("\n2b. the metrics' cost in process: commit, replicate, apply one write (CPU, median of 16 rounds)")
            cost = metrics_cost(16)
            summary["metrics_cost"] = cost
            print(f"  metrics on {cost['on']:.2f} us/write, off {cost['off']:.2f} us/write: "
                  f"the counting adds {cost['added']:.2f} us")
        if args.pb_batches > 0:
            print(f"\n2c. the PB path in process, CPU us per batch of 15 records (~1 KB each), {args.pb_batches} batches")
            roots = [("", ROOT)] + ([("baseline", args.baseline)] if args.baseline else [])
            for label, python in RUNTIMES.items():
                for which, root in roots:
                    c = pb_path_cost(python, 15, max(args.pb_batches, 600), root)
                    name = (label or "first runtime") + (f", {which}" if which else "")
                    print(f"  {name:24s} warm: primary {c['warm']['primary']:6.0f} secondary {c['warm']['secondary']:6.0f}"
                          f"   first 300: primary {c['cold']['primary']:6.0f} secondary {c['cold']['secondary']:6.0f}"
                          f"   ({c['bytes']} B)", flush=True)
        if not args.skip_memory:
            print(f"\n3. memory, {args.memory_sessions} sessions of ~1 KB JSON (RSS growth in a fresh child)")
            mem = memory_per_session(args.memory_sessions)
            summary["memory"] = mem
            for role in ("primary", "backup"):
                r = mem[role]
                print(f"  {role:8s} {r['per_session']:7.0f} B/session  JSON {r['json_per_session']:.0f} B/session  "
                      f"ratio {r['ratio']:.2f}x  (stored value bytes {r['value_bytes'] / r['count']:.0f}/session)")
                print("           one session, sys.getsizeof: " + ", ".join(f"{k} {v}" for k, v in r["parts"].items()))
        if args.profile > 0:
            for mode in [m.strip() for m in args.profile_modes.split(",") if m.strip()]:
                pid_name = "app" if mode.startswith("redis") else "s1"
                print(f"\n4. profile: {mode}, {pid_name} under py-spy for {args.profile:g} s", flush=True)
                saved = args.duration
                args.duration = args.profile
                try:
                    r = one_run(children, workdir, mode, args, f"profile-{mode}", profile=pid_name)
                finally:
                    args.duration = saved
                print(f"  (under the profiler: {r['rps']:.1f} req/s)")
                print(summarise_profile(r.get("profile", ""), 15), flush=True)
        print_summary(summary, results, modes)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        children.kill_all()
        if args.keep:
            print(f"\nwork directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_summary(summary: dict, results: dict, modes: List[str]) -> None:
    print("\nsummary")
    print("  " + "-" * 64)
    med = summary.get("rps")
    if med:
        for m in modes:
            runs = ", ".join(f"{r['rps']:.0f}" for r in results[m])
            cpu = ", ".join(f"{k} {v:.3f}" for k, v in summary["cpu"][m].items())
            print(f"  {m:16s} {med[m]:9.1f} req/s (median; runs {runs})  CPU ms/request: {cpu}")

        def ratio(a: str, b: str, target: Optional[float] = None) -> None:
            if a in med and b in med and med[b]:
                value = med[a] / med[b]
                verdict = ""
                if target is not None:
                    verdict = f"   target >= {target:g}: " + (
                        "met" if value >= target else f"MISSED by {100 * (1 - value / target):.0f}%")
                print(f"  {a + '/' + b:24s} {value:6.3f}{verdict}")

        ratio("sync", "off", 0.7)
        ratio("sync", "baseline", 0.95)
        ratio("async", "off")
        ratio("batched", "off")
        ratio("sync", "redis", 2.5)
        ratio("sync", "redis-1hop")
        for label in RUNTIMES:
            if label:
                ratio(f"sync@{label}", "sync", 3.0)
                ratio(f"sync@{label}", f"off@{label}", 0.85)
        for m in modes:
            if m + NOMETRICS in med:
                ratio(m, m + NOMETRICS, 0.97)
    cost = summary.get("metrics_cost")
    if cost and med and "sync-nometrics" in med:
        # What the counting adds in process, against the CPU one HTTP write
        # costs the primary: the ratio without the HTTP runs' noise.
        per_request = 1000.0 * summary["cpu"]["sync-nometrics"]["s1"]
        value = per_request / (per_request + cost["added"])
        verdict = "met" if value >= 0.97 else "MISSED"
        print(f"  sync, metrics on/off from CPU: {per_request:.0f} us per write + {cost['added']:.2f} us "
              f"counting = {value:.3f}   target >= 0.97: {verdict}")
    w = summary.get("wire")
    if w:
        verdict = "met" if w["percent"] <= 2.0 else "MISSED"
        print(f"  wire     delta {w['delta']} B / full {w['full']} B = {w['percent']:.3f}%   target <= 2%: {verdict}")
    mem = summary.get("memory")
    if mem:
        for role in ("primary", "backup"):
            r = mem[role]
            verdict = "met" if r["ratio"] <= 3.0 else f"MISSED by {100 * (r['ratio'] / 3.0 - 1):.0f}%"
            print(f"  memory   {role:8s} {r['per_session']:.0f} B/session = {r['ratio']:.2f}x JSON   "
                  f"target <= 3x: {verdict}")
    print("  " + "-" * 64)


if __name__ == "__main__":
    sys.exit(main())
