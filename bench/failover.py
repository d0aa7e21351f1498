"""
How long a user waits when the server holding their session dies.

Starts the all-in-one (`twistd -n appliance`, free loopback ports, every
session server a supervised child), and for each trial fills a cart through
the balancer, SIGKILLs the primary's process, and times the next request
through the balancer (which must return the whole cart).  Waits for the
supervisor to restart the dead server before the next trial.

    python3 bench/failover.py [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.helpers import cluster_ini, free_ports, health, http, set_cookie_value, twistd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    import subprocess

    lb, witness = free_ports(2)
    text, ports = cluster_ini(
        balancer=f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\nwitness = 127.0.0.1:{witness}\nhealth_interval = 250ms\n"
    )
    work = tempfile.mkdtemp(prefix="failover-")
    config = os.path.join(work, "cluster.ini")
    with open(config, "w") as f:
        f.write(text)
    log = open(os.path.join(work, "appliance.log"), "wb")
    proc = subprocess.Popen(twistd("--config", config), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{lb}"

    def safe_health(port):
        try:
            return health(port) or {}
        except OSError:
            return {}

    def ready():
        return all(
            safe_health(port).get("status") == "ok" and all(safe_health(port).get("peers", {"-": False}).values())
            for port, _ in ports.values()
        )

    def wait(predicate, seconds=60.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise SystemExit("timed out; see " + work)

    times = []
    try:
        wait(ready)
        for trial in range(args.trials):
            cookie = None
            items = [f"item{trial}-{i}" for i in range(5)]
            for item in items:
                status, headers, _ = http("POST", base + "/cart/items", {"item": item}, f"APPSESSION={cookie}" if cookie else None)
                cookie = set_cookie_value(headers) or cookie
            primary = cookie.split("!")[1]
            port = ports[primary][0]
            pid = health(port)["pid"]
            os.kill(pid, 9)
            start = time.monotonic()
            status, headers, body = http("GET", base + "/cart", cookie=f"APPSESSION={cookie}")
            elapsed = (time.monotonic() - start) * 1000
            if status != 200 or json.loads(body)["items"] != items:
                raise SystemExit(f"trial {trial}: lost the cart: {status} {body!r}")
            new_primary = set_cookie_value(headers).split("!")[1]
            times.append(elapsed)
            print(f"trial {trial}: killed {primary} (pid {pid}); cart served by {new_primary} in {elapsed:.1f} ms")
            wait(lambda: safe_health(port).get("pid") not in (None, pid) and ready())
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(15)
        log.close()
    print(f"first request after SIGKILL of the primary: median {statistics.median(times):.1f} ms, "
          f"max {max(times):.1f} ms over {len(times)} trials; no item lost")


if __name__ == "__main__":
    main()
