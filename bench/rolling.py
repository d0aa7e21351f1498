"""
Rolling restart under continuous writes: 0 errors and 0 acknowledged writes
lost is the target, in every replication mode.

For each mode, starts three session servers and a balancer as real
processes (the multi-host way, `--node NAME`), runs writer clients through
the balancer (each adds numbered items to its own cart and remembers what
was acknowledged), then SIGTERMs each server in turn: it drains (hands its
sessions over) and exits; it is started again, and the next one goes once
it is back and the writes flowed for a while.  At the end every cart is
read back.  Prints, per mode: writes acknowledged, error answers by status,
acknowledged writes lost, how long each drain took, and how primaries and
backups are spread afterwards.

    python3 bench/rolling.py [--modes sync,async,batched] [--clients 8]
                             [--balancer plugin|sticky] [--between 3]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.helpers import cluster_ini, free_ports, health, http, twistd  # noqa: E402
from tests.test_e2e_drain import Writers  # noqa: E402

NAMES = ("s1", "s2", "s3")


def safe_health(port):
    try:
        return health(port) or {}
    except OSError:
        return {}


def wait(predicate, seconds, what, work):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}; logs in {work}")


def run(mode: str, balancer: str, clients: int, between: float) -> dict:
    lb, witness = free_ports(2)
    extra = "drain_timeout = 20s"
    if mode == "batched":
        extra += "\nbatch_count = 1000\nbatch_interval = 30s"
    section = (
        f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb}\nwitness = 127.0.0.1:{witness}\nmode = {balancer}\nnode = s1\n"
        "health_interval = 200ms\nhealth_rise = 1\ndown_time = 1s\n"
    )
    text, ports = cluster_ini(NAMES, mode, extra, balancer=section)
    work = tempfile.mkdtemp(prefix=f"rolling-{mode}-")
    config = os.path.join(work, "cluster.ini")
    with open(config, "w") as f:
        f.write(text)
    procs = {}

    def start(key, *args):
        log = open(os.path.join(work, f"{key}.log"), "ab")
        procs[key] = subprocess.Popen(
            twistd("--config", config, *args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def linked(name):
        h = safe_health(ports[name][0])
        return h.get("status") == "ok" and all(h.get("peers", {}).get(o) for o in NAMES if o != name)

    writers = None
    try:
        for name in NAMES:
            start(name, "--node", name, "--roles", "server")
        start("lb1", "--node", "s1", "--roles", "balancer")
        for name in NAMES:
            wait(lambda: linked(name), 60, f"{name} to link", work)
        base = f"http://127.0.0.1:{lb}"
        wait(lambda: http("GET", base + "/_appliance/lb-health")[0] == 200, 30, "the balancer", work)
        writers = Writers(base, clients)
        writers.start()
        time.sleep(between)
        drains = []
        for name in NAMES:
            held = safe_health(ports[name][0]).get("primaries", 0)
            began = time.monotonic()
            procs[name].terminate()
            procs[name].wait(60)
            drains.append((name, held, time.monotonic() - began))
            start(name, "--node", name, "--roles", "server")
            wait(lambda: linked(name), 60, f"{name} to come back", work)
            time.sleep(between)
        writers.finish()
        spread = {name: (safe_health(ports[name][0]).get("primaries", 0), safe_health(ports[name][0]).get("sessions", 0))
                  for name in NAMES}
        lost = writers.lost()
        errors = collections.Counter(e[1] if len(e) > 2 else e[1].split("(")[0] for e in writers.errors)
        return {"work": work, "acked": writers.writes(), "errors": dict(errors), "lost": len(lost), "drains": drains,
                "spread": spread}
    finally:
        if writers is not None:
            writers.finish()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="sync,async,batched")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--balancer", default="plugin", choices=("plugin", "sticky"))
    parser.add_argument("--between", type=float, default=3.0, help="seconds of writes before each restart and after")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    failed = False
    for mode in args.modes.split(","):
        r = run(mode, args.balancer, args.clients, args.between)
        print(f"== {mode} ({args.balancer} balancer, {args.clients} writers)")
        print(f"  acknowledged writes {r['acked']}; error answers {sum(r['errors'].values())} {r['errors'] or ''};"
              f" acknowledged writes lost {r['lost']}")
        for name, held, took in r["drains"]:
            print(f"  SIGTERM {name}: held {held} primaries, drained and exited in {took:.2f} s")
        print("  after: " + ", ".join(f"{n} {p} primaries / {s} copies" for n, (p, s) in r["spread"].items()))
        failed = failed or bool(r["errors"]) or bool(r["lost"])
        if args.keep or r["errors"] or r["lost"]:
            print(f"  logs in {r['work']}")
        else:
            shutil.rmtree(r["work"], ignore_errors=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
