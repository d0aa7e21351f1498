"""
The checker: a pure function of the workload's history, the final reads and
the fault log, in the manner of Jepsen's.  No I/O, no clock.

History: one L{Op} per request a client made, in the order it made them
(each client waits for an answer or its timeout before the next request).
Every client adds unique items C{c<client>-<seq>} to its own cart, so every
item names the one add that could have put it there.

    lost        an acknowledged add (200 and the item in the returned list)
                missing from the final read of its cart
    unacked     items present at the end whose add failed or timed out
                (allowed: the request may have been carried out)
    phantoms    items present (at the end or in any read) that this client
                never sent: must be 0
    stale       a read (GET, or the list a POST returned) lacking an item
                whose add was acknowledged before the read started, or an
                item an earlier completed read of the same client returned
    dirty       a read that returned an item absent from the final state
    gaps        the longest time a client went without a successful answer,
                overall and overlapping each fault's window

Items cross the history in compact form (L{encode_items}): a cart of a few
thousand items is read tens of thousands of times in a long run.
"""

from __future__ import annotations

import bisect
import collections
import re
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from attrs import define, field, frozen

Outcome = Union[int, str]
TIMEOUT = "timeout"

_ITEM = re.compile(r"^c(\d+)-(\d+)$")


def item_name(client: int, seq: int) -> str:
    return f"c{client}-{seq}"


def encode_items(client: int, items: Sequence[str]) -> dict:
    """
    C{items} (in cart order) as C{{"runs": [[first, last], ...], "other":
    [...]}}: runs of consecutive sequence numbers of this client's own items,
    and everything else verbatim.
    """
    runs: List[List[int]] = []
    other: List[str] = []
    for item in items:
        m = _ITEM.match(item) if isinstance(item, str) else None
        if m is None or int(m.group(1)) != client:
            other.append(item if isinstance(item, str) else repr(item))
            continue
        seq = int(m.group(2))
        if runs and runs[-1][1] + 1 == seq:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return {"runs": runs, "other": other}


@frozen
class Items:
    """
    What one answer said the cart holds: this client's own items by
    sequence number (C{dupes}: how many appeared more than once), and any
    other values.
    """

    own: frozenset
    other: Tuple[str, ...] = ()
    dupes: int = 0

    @classmethod
    def decode(cls, encoded: dict) -> "Items":
        own: Set[int] = set()
        total = 0
        for first, last in encoded.get("runs", ()):
            own.update(range(first, last + 1))
            total += last - first + 1
        return cls(frozenset(own), tuple(encoded.get("other", ())), total - len(own))

    @classmethod
    def of(cls, client: int, items: Sequence[str]) -> "Items":
        return cls.decode(encode_items(client, items))


@frozen
class Op:
    """
    One request: C{kind} "add" (of item number C{seq}) or "read"; C{outcome}
    the HTTP status, C{"timeout"}, or an error name; C{items} the cart the
    answer returned, when it returned one.
    """

    client: int
    kind: str
    start: float
    end: float
    outcome: Outcome
    seq: Optional[int] = None
    items: Optional[Items] = None
    route: Optional[str] = None

    @property
    def route_servers(self) -> frozenset:
        """
        The primary and secondary the client's cookie named after this answer.
        """
        return frozenset(self.route.split("!")) if self.route else frozenset()

    @property
    def ok(self) -> bool:
        return self.outcome == 200

    @property
    def acked(self) -> bool:
        return self.kind == "add" and self.ok and self.items is not None and self.seq in self.items.own

    @classmethod
    def from_record(cls, r: dict) -> "Op":
        items = Items.decode(r["items"]) if r.get("items") is not None else None
        return cls(r["client"], r["kind"], r["start"], r["end"], r["outcome"], r.get("seq"), items, r.get("route"))


@frozen
class Fault:
    """
    One fault of the schedule: C{start} when it was applied, C{end} when it
    was undone (heal, resume, restart), C{servers} the servers it hit and
    C{unreplicated} the largest health figure each reported from just
    before the fault until it was undone.
    """

    name: str
    start: float
    end: float
    servers: Tuple[str, ...] = ()
    unreplicated: Dict[str, int] = field(factory=dict)

    @classmethod
    def from_record(cls, r: dict) -> "Fault":
        return cls(r["name"], r["start"], r["end"], tuple(r.get("servers", ())), dict(r.get("unreplicated") or {}))


@frozen
class Gap:
    client: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@define
class FaultReport:
    """
    What happened in a fault's window, from its start until the next fault
    starts: C{wait} is the longest part of any client's wait for a
    successful answer that fell inside it (C{longest}: that whole wait).
    """

    fault: Fault
    window_end: float
    longest: Optional[Gap] = None
    wait: float = 0.0
    lost: int = 0
    stale: int = 0
    dirty: int = 0


@define
class Report:
    clients: int = 0
    adds: int = 0
    acked: int = 0
    reads: int = 0
    lost: Dict[int, List[int]] = field(factory=dict)
    unacked: collections.Counter = field(factory=collections.Counter)
    phantoms: List[Tuple[int, str]] = field(factory=list)
    duplicates: int = 0
    stale: int = 0
    stale_kept: int = 0
    stale_examples: List[str] = field(factory=list)
    dirty: int = 0
    dirty_examples: List[str] = field(factory=list)
    bad_acks: int = 0
    unread: List[int] = field(factory=list)
    outcomes: collections.Counter = field(factory=collections.Counter)
    longest: Optional[Gap] = None
    faults: List[FaultReport] = field(factory=list)
    lost_outside: int = 0
    stale_outside: int = 0
    dirty_outside: int = 0
    origin: float = 0.0

    @property
    def lost_count(self) -> int:
        return sum(len(v) for v in self.lost.values())

    @property
    def safe(self) -> bool:
        """
        Nothing acknowledged lost, nothing stale or dirty served, nothing
        invented, every cart read back.
        """
        return not (self.lost_count or self.stale or self.dirty or self.phantoms or self.unread)

    def render(self, title: str = "") -> str:
        lines = [title] if title else []
        pct = 100.0 * self.lost_count / self.acked if self.acked else 0.0
        lines.append(
            f"  clients {self.clients}; adds {self.adds} ({self.acked} acknowledged); reads {self.reads}; "
            f"faults {len(self.faults)}"
        )
        lines.append(f"  lost acknowledged writes: {self.lost_count} of {self.acked} ({pct:.2f} %)")
        unacked = ", ".join(f"{k} {v}" for k, v in sorted(self.unacked.items(), key=str)) or "none"
        lines.append(f"  appeared without acknowledgement (allowed): {sum(self.unacked.values())} ({unacked})")
        lines.append(f"  phantoms (never sent): {len(self.phantoms)}" + _examples(f"{c}:{i}" for c, i in self.phantoms))
        lines.append(
            f"  stale reads: {self.stale} ({self.stale_kept} lacked items still there at the end; "
            f"the rest lacked only items gone at the end)"
            + _examples(self.stale_examples)
        )
        lines.append(f"  dirty reads: {self.dirty}" + _examples(self.dirty_examples))
        if self.duplicates or self.bad_acks:
            lines.append(f"  items added twice: {self.duplicates}; 200 answers lacking their own item: {self.bad_acks}")
        if self.unread:
            lines.append(f"  carts never read back: clients {', '.join(map(str, self.unread))}")
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: str(kv[0])))
        lines.append(f"  answers: {outcomes or 'none'}")
        if self.longest is not None:
            lines.append(f"  longest wait for a successful answer: {self._gap(self.longest)}")
        if self.faults:
            lines.append("  per fault (at: s since start; wait: longest wait inside its window, which lasts until")
            lines.append("  the next fault starts; lost: acknowledged writes that went missing in it):")
            lines.append(f"    {'#':>3} {'fault':<34} {'at':>7} {'held':>5} {'wait':>6} {'lost':>5} {'stale':>5} "
                         f"{'dirty':>5}  unreplicated (largest)")  # fmt: skip
            for n, f in enumerate(self.faults, 1):
                wait = f"{f.wait:.2f}" if f.longest is not None else "-"
                unrepl = ", ".join(f"{s}={v}" for s, v in sorted(f.fault.unreplicated.items())) or "-"
                lines.append(
                    f"    {n:>3} {f.fault.name[:34]:<34} {f.fault.start - self.origin:>7.1f} "
                    f"{f.fault.end - f.fault.start:>5.1f} {wait:>6} {f.lost:>5} {f.stale:>5} {f.dirty:>5}  {unrepl}"
                )
            worst = max(self.faults, key=lambda f: f.wait)
            if worst.longest is not None:
                lines.append(
                    f"  longest wait during a fault: {worst.wait:.2f} s ({worst.fault.name}; "
                    f"the whole wait: {self._gap(worst.longest)})"
                )
            lines.append(
                f"  outside fault windows: lost {self.lost_outside}, stale {self.stale_outside}, "
                f"dirty {self.dirty_outside}"
            )
        return "\n".join(lines)

    def _gap(self, gap: Gap) -> str:
        return f"{gap.seconds:.2f} s (client {gap.client}, from {gap.start - self.origin:.1f} s)"


def _examples(examples: Iterable[str], n: int = 3) -> str:
    shown = list(examples)[:n]
    return f" (e.g. {'; '.join(shown)})" if shown else ""


def check(history: Iterable[Op], finals: Dict[int, Optional[Items]], faults: Sequence[Fault] = ()) -> Report:
    """
    The report for C{history} given each client's final read (None: the
    cart could not be read back) and the fault log.
    """
    by_client: Dict[int, List[Op]] = collections.defaultdict(list)
    for op in history:
        by_client[op.client].append(op)
    faults = sorted(faults, key=lambda f: f.start)
    report = Report(clients=len(set(by_client) | set(finals)))
    starts = [op.start for ops in by_client.values() for op in ops]
    report.origin = min(starts + [f.start for f in faults], default=0.0)
    windows = [
        FaultReport(f, faults[i + 1].start if i + 1 < len(faults) else float("inf")) for i, f in enumerate(faults)
    ]
    report.faults = windows
    lookup = _Windows(windows)
    for client in sorted(set(by_client) | set(finals)):
        ops = sorted(by_client.get(client, []), key=lambda op: op.start)
        _check_client(report, client, ops, finals.get(client), lookup)
    return report


class _Windows:
    """
    The fault windows in time order, looked up by bisection: a long run has
    tens of thousands of operations per client.
    """

    def __init__(self, windows: Sequence[FaultReport]):
        self.windows = list(windows)
        self.starts = [w.fault.start for w in self.windows]

    def at(self, t: float) -> Optional[FaultReport]:
        """
        The window that C{t} falls in, if any.
        """
        i = bisect.bisect_right(self.starts, t) - 1
        return self.windows[i] if i >= 0 and t < self.windows[i].window_end else None

    def overlapping(self, a: float, b: float) -> List[FaultReport]:
        first = max(bisect.bisect_right(self.starts, a) - 1, 0)
        last = bisect.bisect_left(self.starts, b)
        return [w for w in self.windows[first:last] if a < w.window_end and b > w.fault.start]


def _check_client(report: Report, client: int, ops: List[Op], final: Optional[Items], windows) -> None:
    sent = {op.seq: op for op in ops if op.kind == "add"}
    acked: Dict[int, Op] = {op.seq: op for op in ops if op.acked}
    report.adds += len(sent)
    report.acked += len(acked)
    report.bad_acks += sum(1 for op in ops if op.kind == "add" and op.ok and op.items is not None and not op.acked)
    for op in ops:
        report.outcomes[op.outcome] += 1

    if final is None:
        report.unread.append(client)
    else:
        present = final.own
        lost = sorted(seq for seq in acked if seq not in present)
        if lost:
            report.lost[client] = lost
        for seq in present:
            if seq in sent and seq not in acked:
                report.unacked[sent[seq].outcome] += 1
        report.phantoms.extend((client, item_name(client, s)) for s in sorted(present) if s not in sent)
        report.phantoms.extend((client, o) for o in final.other)
        report.duplicates += final.dupes

    _check_reads(report, client, ops, final, sent, windows)
    _check_gaps(report, client, ops, windows)


def _check_reads(report: Report, client: int, ops: List[Op], final: Optional[Items], sent, windows) -> None:
    """
    Stale and dirty reads, and phantoms seen on the way.  An acknowledged add
    is a read too (its answer lists the item), so "acknowledged before the
    read started" is covered by "returned by a read completed before".

    A lost write is charged to the window of the first read that missed it
    (when it went missing), or, if every later read still had it, to the
    window of the client's last read.
    """
    unplaced = set(report.lost.get(client, ()))
    last_read: Optional[Op] = None
    must: Set[int] = set()
    pending: List[Tuple[float, frozenset]] = []
    seen_phantoms = {name for c, name in report.phantoms if c == client}
    for op in ops:
        if not op.ok or op.items is None:
            continue
        still = []
        for end, seqs in pending:
            if end < op.start:
                must.update(seqs)
            else:
                still.append((end, seqs))
        pending = still
        report.reads += 1
        last_read = op
        got = op.items.own
        w = windows.at(op.start)
        missing = must.difference(got)
        if missing and unplaced:
            _charge_loss(report, w, len(unplaced.intersection(missing)))
            unplaced.difference_update(missing)
        if missing:
            report.stale += 1
            if final is not None and not missing.isdisjoint(final.own):
                report.stale_kept += 1
            if w is None:
                report.stale_outside += 1
            else:
                w.stale += 1
            if len(report.stale_examples) < 5:
                report.stale_examples.append(
                    f"client {client} {op.kind} at {op.start - report.origin:.1f} s lacked "
                    f"{', '.join(item_name(client, s) for s in sorted(missing)[:3])}"
                    + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                )
        if final is not None:
            gone = got.difference(final.own)
            if gone:
                report.dirty += 1
                if w is None:
                    report.dirty_outside += 1
                else:
                    w.dirty += 1
                if len(report.dirty_examples) < 5:
                    report.dirty_examples.append(
                        f"client {client} {op.kind} at {op.start - report.origin:.1f} s returned "
                        f"{', '.join(item_name(client, s) for s in sorted(gone)[:3])}, absent at the end"
                    )
        invented = [item_name(client, s) for s in got if s not in sent] + list(op.items.other)
        for name in invented:
            if name not in seen_phantoms:
                seen_phantoms.add(name)
                report.phantoms.append((client, name))
        pending.append((op.end, got))
    if unplaced:
        _charge_loss(report, windows.at(last_read.end) if last_read is not None else None, len(unplaced))


def _charge_loss(report: Report, window: Optional[FaultReport], n: int) -> None:
    if window is None:
        report.lost_outside += n
    else:
        window.lost += n


def _check_gaps(report: Report, client: int, ops: List[Op], windows: _Windows) -> None:
    if not ops:
        return
    marks = [ops[0].start] + sorted(op.end for op in ops if op.ok) + [max(op.end for op in ops)]
    for a, b in zip(marks, marks[1:]):
        if b <= a:
            continue
        gap = Gap(client, a, b)
        if report.longest is None or gap.seconds > report.longest.seconds:
            report.longest = gap
        for w in windows.overlapping(a, b):
            inside = min(b, w.window_end) - max(a, w.fault.start)
            if inside > w.wait:
                w.wait = inside
                w.longest = gap
