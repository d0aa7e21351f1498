"""
The operator's command line, C{python -m appliance}: it reads the
configuration for the admin addresses and the credentials, and talks to
the admin listeners.

    status              the whole cluster (asked of the first listener that answers)
    sessions NODE       a node's sessions; --sid SID one session's metadata,
                        --end SID ends it on both copies
    drain NODE          the node hands its sessions over (it stays up, draining)
    reload              the processes re-read their configuration

Exit codes: 0 ok; 1 the cluster is unhealthy or the operation failed; 2 a
usage mistake or no admin listener could be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Callable, List, Optional, Sequence, TextIO, Tuple

from appliance.config import Address, ClusterConfig, ConfigError

OK, FAILED, USAGE = 0, 1, 2


class Unreachable(Exception):
    """
    No admin listener answered.
    """


class Admin:
    """
    Blocking calls to the admin listeners of C{cluster}.
    """

    def __init__(self, cluster: ClusterConfig, timeout: float):
        self.cluster = cluster
        self.timeout = timeout
        token = cluster.cluster.admin_token
        self.read_credential = token
        self.operation_credential = token or cluster.cluster.secret

    def call(self, address: Address, method: str, path: str, body: Optional[dict] = None,
             timeout: Optional[float] = None) -> Tuple[int, dict]:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
            headers["Authorization"] = f"Bearer {self.operation_credential}"
        elif self.read_credential:
            headers["Authorization"] = f"Bearer {self.read_credential}"
        request = urllib.request.Request(f"http://{address}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.status, _document(response.read())
        except urllib.error.HTTPError as e:
            return e.code, _document(e.read())
        except (OSError, ValueError) as e:
            raise Unreachable(f"{address}: {getattr(e, 'reason', None) or e}") from None

    def first(self, method: str, path: str, sections: Optional[Sequence[str]] = None) -> Tuple[str, int, dict]:
        """
        The answer of the first admin listener that answers, supervisor
        first, then balancers, the responder and the nodes.
        """
        order = {"cluster": 0, "dns": 2}
        admins = sorted(self.cluster.admins(), key=lambda sa: order.get(sa[0], 1 if sa[0].startswith("balancer:") else 3))
        why = []
        for section, address in admins:
            if sections is not None and section not in sections:
                continue
            try:
                code, document = self.call(address, method, path)
                return section, code, document
            except Unreachable as e:
                why.append(f"[{section}] {e}")
        if not why:
            raise Unreachable("no admin address in the configuration")
        raise Unreachable("no admin listener answers: " + "; ".join(why))

    def node(self, name: str) -> Address:
        config = self.cluster.node(name)
        if config is None:
            raise LookupError(f"no [node:{name}] in {self.cluster.path}")
        if config.admin is None:
            raise LookupError(f"[node:{name}] has no admin address in {self.cluster.path}")
        return config.admin


def _document(raw: bytes) -> dict:
    document = json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError("the answer is no JSON object")
    return document


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(out: TextIO, header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def healthy(view: dict) -> bool:
    """
    Every process answers and says it is up (a draining or isolated node,
    or one without an admin address, is not healthy).
    """
    return all(s.get("state") == "up" for s in view["sections"])


def show_status(out: TextIO, view: dict) -> None:
    out.write(f"cluster {view['cluster']} (asked {view['asked_by']})\n")
    nodes, balancers, dns = [], [], []
    for s in view["sections"]:
        state = s.get("state", "?")
        if s["kind"] == "node":
            if "sessions" not in s:
                nodes.append([s["name"], state] + ["-"] * 7 + [s.get("error", "")])
                continue
            trips = list((s.get("round_trip") or {}).values())
            hour = s.get("last_hour") or {}
            nodes.append([s["name"], state, _cell(s["sessions"]), _cell(s["primaries"]), _cell(s["backups"]),
                          _cell(s.get("unprotected")), _cell(s.get("unreplicated")),
                          f"{max(trips) * 1000:.1f}ms" if trips else "-",
                          "/".join(_cell(hour.get(k)) for k in ("failovers", "takeovers", "fencings", "resyncs")), ""])
        elif s["kind"] == "balancer":
            if "servers" not in s:
                balancers.append([s["name"], state, "-", "-", "", s.get("error", "")])
                continue
            servers = " ".join(f"{n}:{st}" for n, st in s["servers"].items())
            rate = s.get("error_rate")
            balancers.append([s["name"], state, _cell(s.get("requests_per_second")),
                              "-" if rate is None else f"{rate * 100:.1f}%", servers, _cell(s.get("sticky_entries"))])
        elif s["kind"] == "dns":
            dns.append([s.get("name", "dns"), state, _cell(s.get("queries_per_second")),
                        ", ".join(s.get("answer") or []) or s.get("error", "")])
    if nodes:
        _table(out, ["NODE", "STATE", "SESSIONS", "PRIMARIES", "BACKUPS", "NO-SECONDARY", "UNREPLICATED", "RTT",
                     "FAILOVERS/TAKEOVERS/FENCINGS/RESYNCS (1h)", ""], nodes)
    if balancers:
        out.write("\n")
        _table(out, ["BALANCER", "STATE", "REQ/S", "5XX", "SERVERS", "STICKY"], balancers)
    if dns:
        out.write("\n")
        _table(out, ["DNS", "STATE", "QUERIES/S", "ANSWER"], dns)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m appliance", description="Operate a running appliance cluster.")
    p.add_argument("--config", "-c", default="etc/cluster.ini", help="the cluster configuration (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a listener (default: %(default)s)")
    commands = p.add_subparsers(dest="command", required=True, metavar="status|sessions|drain|reload")
    commands.add_parser("status", help="the whole cluster")
    sessions = commands.add_parser("sessions", help="a node's sessions")
    sessions.add_argument("node")
    one = sessions.add_mutually_exclusive_group()
    one.add_argument("--sid", help="show this session's metadata")
    one.add_argument("--end", metavar="SID", help="end this session on both copies")
    drain = commands.add_parser("drain", help="hand a node's sessions over (it stays up, draining)")
    drain.add_argument("node")
    commands.add_parser("reload", help="the processes re-read their configuration")
    return p


def run(argv: Sequence[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:
        return USAGE if e.code else OK
    try:
        cluster = ClusterConfig.from_path(args.config)
    except ConfigError as e:
        err.write(f"appliance: {e}\n")
        return USAGE
    admin = Admin(cluster, args.timeout)
    command: Callable = {"status": status, "sessions": sessions, "drain": drain, "reload": reload}[args.command]
    try:
        code, document, human = command(admin, args)
    except Unreachable as e:
        err.write(f"appliance: {e}\n")
        return USAGE
    except LookupError as e:
        err.write(f"appliance: {e.args[0]}\n")
        return USAGE
    if args.json:
        out.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    else:
        human(out)
    return code


def _failed(document: dict) -> Callable[[TextIO], None]:
    return lambda out: out.write(f"failed: {document.get('error', document)}\n")


def status(admin: Admin, args):
    _, code, view = admin.first("GET", "/cluster.json")
    if code != 200:
        return FAILED, view, _failed(view)
    return (OK if healthy(view) else FAILED), view, lambda out: show_status(out, view)


def sessions(admin: Admin, args):
    address = admin.node(args.node)
    if args.end:
        code, document = admin.call(address, "POST", "/end-session", {"sid": args.end},
                                    admin.cluster.cluster.lock_wait + 5.0)
        return (OK if code == 200 else FAILED), document, (
            (lambda out: out.write(f"ended {document['ended']} on both copies\n")) if code == 200 else _failed(document))
    if args.sid:
        from urllib.parse import quote

        code, document = admin.call(address, "GET", f"/session.json?sid={quote(args.sid, safe='')}")

        def one(out):
            for key in ("sid", "node", "role", "version", "epoch", "primary", "secondary", "size",
                        "idle_seconds", "expires_in_seconds"):
                out.write(f"{key:<20}{_cell(document.get(key))}\n")

        return (OK if code == 200 else FAILED), document, one if code == 200 else _failed(document)
    code, document = admin.call(address, "GET", "/sessions.json")
    if code != 200:
        return FAILED, document, _failed(document)

    def listing(out):
        out.write(f"{document['node']}: {document['count']} sessions, {document['primaries']} primaries\n")
        if document["largest"] is None:
            out.write("largest: being found (ask again in a few seconds)\n")
            return
        out.write(f"largest (as of {document['largest_age']:g} s ago):\n")
        _table(out, ["SID", "BYTES", "VERSION"], [[s["sid"], str(s["size"]), str(s["version"])] for s in document["largest"]])

    return OK, document, listing


def drain(admin: Admin, args):
    address = admin.node(args.node)
    code, report = admin.call(address, "POST", "/drain", {}, admin.cluster.cluster.drain_timeout + 10.0)
    if code != 200:
        return FAILED, report, _failed(report)
    done = report["left"] == 0 and not report["timed_out"]

    def human(out):
        out.write(f"{report['node']} drained: {report['handed_over']} primaries handed over, {report['left']} left"
                  f"{' (timed out)' if report['timed_out'] else ''}; it stays up, draining, until stopped\n")

    return (OK if done else FAILED), report, human


def reload(admin: Admin, args):
    """
    The all-in-one supervisor reloads its children with itself; without
    one, each process reloads (once, though it may have several listeners).
    """
    targets = []
    if admin.cluster.cluster.admin is not None:
        try:
            admin.call(admin.cluster.cluster.admin, "GET", "/status.json")
            targets = [("cluster", admin.cluster.cluster.admin)]
        except Unreachable:
            targets = []
    if not targets:
        targets = [(s, a) for s, a in admin.cluster.admins() if s != "cluster"]
    results, seen, failed, reached = {}, set(), False, False
    for section, address in targets:
        try:
            code, who = admin.call(address, "GET", "/status.json")
        except Unreachable as e:
            results[section] = {"error": str(e)}
            failed = True
            continue
        if who.get("pid") in seen:
            continue
        seen.add(who.get("pid"))
        code, answer = admin.call(address, "POST", "/reload", {})
        reached = True
        results[section] = answer
        failed = failed or code != 200
    if not reached:
        raise Unreachable("no admin listener answers: " + "; ".join(f"[{s}] {r['error']}" for s, r in results.items()))

    def human(out):
        for section, answer in results.items():
            line = answer.get("reloaded") or f"failed: {answer.get('error')}"
            out.write(f"[{section}] {line}\n")

    return (FAILED if failed else OK), results, human
