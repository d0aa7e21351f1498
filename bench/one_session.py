"""
Concurrent writes on one session sent to every server at once: 0
acknowledged writes lost is the target.

Starts three session servers as processes (the multi-host way), creates one
session, then C{--threads} clients post numbered items to it, client i to
server i % 3, all with the session's first cookie (as a sticky balancer's
redispatch or a stale cookie sends them), without retrying; reads the cart
back.  Prints the answers by server and status, the acknowledged writes
lost, the writes answered "not served" that persisted anyway, and the rate.

    python3 bench/one_session.py [--writes 10000] [--threads 48]

Exits 1 when an acknowledged write was lost or a declined one persisted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.test_e2e_concurrent import Hammer, one_session, read_cart  # noqa: E402


class Case:
    """
    Enough of a trial test case for L{tests.helpers.RealNodes}.
    """

    def __init__(self, directory):
        self.directory = directory
        self.cleanups = []

    def mktemp(self):
        return os.path.join(self.directory, "run")

    def addCleanup(self, f, *args):
        self.cleanups.append((f, args))

    def cleanup(self):
        for f, args in reversed(self.cleanups):
            f(*args)


def main() -> None:
    import tempfile

    from tests.helpers import RealNodes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=48)
    parser.add_argument("--replication", default="sync")
    args = parser.parse_args()
    case = Case(tempfile.mkdtemp(prefix="concurrent-"))
    try:
        nodes = RealNodes(case, replication=args.replication)
        cookie = one_session(nodes)
        urls = [(name, nodes.url(name, "")) for name in ("s1", "s2", "s3")]
        hammer = Hammer(urls, cookie, args.threads, max(1, args.writes // args.threads))
        began = time.monotonic()
        hammer.run()
        took = time.monotonic() - began
        items = read_cart(nodes, cookie)
    finally:
        case.cleanup()
    sent = sum(hammer.answers.values())
    print(f"== {args.replication}: {sent} writes on one session, {args.threads} clients over 3 servers, {took:.1f} s")
    for (name, status), n in sorted(hammer.answers.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"  {name} {status}: {n}")
    lost = hammer.lost(items)
    declined = hammer.persisted_though_declined(items)
    print(f"  acknowledged {len(hammer.acked)}; acknowledged writes lost {len(lost)};"
          f" answered 'not served' yet persisted {len(declined)}; in the cart {len(items) - 1}")
    print(f"  {len(hammer.acked) / took:.0f} acknowledged writes/s")
    raise SystemExit(1 if lost or declined else 0)


if __name__ == "__main__":
    main()
