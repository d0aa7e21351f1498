"""
Jepsen-style chaos run: a lab of network namespaces (three session servers,
the balancer and the clients on hosts of their own), concurrent clients
adding unique items to their carts through the balancer, a seeded schedule
of faults (cuts, one-way cuts, isolation, pause, kill and restart, two kills
a second apart, delay), then every cart read back and checked.

    python3 bench/chaos.py --mode sync --faults 40        # the target run, ~7 min
    python3 bench/chaos.py --mode all --faults 9          # one of each kind, every mode

Prints one report per mode and exits 1 when a sync run lost an acknowledged
write, served a stale or dirty read, invented an item or could not read a
cart back.  Needs root (network namespaces) and nft/ip.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from appliance.testing.chaos import KINDS, run_chaos  # noqa: E402
from appliance.testing.lab import LabUnavailable  # noqa: E402


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=("sync", "async", "batched", "all"), default="sync")
    p.add_argument("--faults", type=int, default=40, help="fault steps per mode (default 40)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated subset of: {', '.join(KINDS)}")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients, one session each (default 8)")
    p.add_argument("--sticky", type=int, default=2,
                   help="clients that keep the first routing hint of their session (default 2)")  # fmt: skip
    p.add_argument("--rate", type=float, default=100.0, help="requests per second, all clients (default 100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hold", type=float, nargs=2, default=(3.0, 8.0), metavar=("MIN", "MAX"),
                   help="seconds each fault is held, drawn between MIN and MAX (default 3 8)")  # fmt: skip
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the cluster is whole again (default 2)")
    p.add_argument("--timeout", type=float, default=3.0, help="per-request timeout of a client (default 3)")
    p.add_argument("--servers", type=int, default=3)
    p.add_argument("--dir", default=None, help="where each mode's lab keeps its logs (default: a new temp dir)")
    args = p.parse_args(argv)
    args.kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if any(k not in KINDS for k in args.kinds) or not args.kinds:
        p.error(f"--kinds: expected some of {', '.join(KINDS)}")
    if args.faults < 1 or args.clients < 1 or args.rate <= 0 or args.servers < 2:
        p.error("--faults and --clients at least 1, --rate positive, --servers at least 2")
    return args


def main(argv) -> int:
    args = parse(argv)
    base = args.dir or tempfile.mkdtemp(prefix="appliance-chaos-")
    modes = ("sync", "async", "batched") if args.mode == "all" else (args.mode,)
    print(f"$ {shlex.join([sys.executable, 'bench/chaos.py', *argv])}")
    failed = False
    for mode in modes:
        began = time.monotonic()
        try:
            result = run_chaos(
                os.path.join(base, mode), mode, args.faults, args.seed, tuple(args.hold), args.kinds, args.servers,
                clients=args.clients, sticky=args.sticky, rate=args.rate, settle=args.settle, timeout=args.timeout,
            )  # fmt: skip
        except LabUnavailable as e:
            print(f"chaos: {e}", file=sys.stderr)
            return 2
        title = f"== {mode}: {args.faults} faults, seed {args.seed}, {time.monotonic() - began:.0f} s"
        print(result.render(title), flush=True)
        if mode == "sync" and (not result.report.safe or result.problems):
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
