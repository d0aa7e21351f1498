"""
A seeded schedule of faults run against a lab while the workload writes,
then the final read and the checker's report.

Never more than one server is faulty at a time (the C{sync} guarantee is
for one fault): each step applies a fault, holds it, undoes it, waits for
the cluster to be whole again and lets it settle before the next.  The one
exception is the step the issue found: two servers killed a second apart,
each restarted half a second after its kill (what the all-in-one's
supervisor does).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from attrs import define, field, frozen

from .checker import Fault, Items, Op, Report, check
from .lab import Lab

KINDS = ("cut", "one-way", "isolate-servers", "isolate", "cut-balancer", "pause", "kill", "kill-two", "delay")
RESTART_AFTER = 0.5
KILL_APART = 1.0


@frozen
class Step:
    """
    One fault: C{kind} (one of L{KINDS}) on C{servers}, held C{hold}
    seconds; C{seconds} is the one-way delay of a C{delay} step.
    """

    kind: str
    servers: Tuple[str, ...]
    hold: float
    seconds: float = 0.0

    @property
    def name(self) -> str:
        a = self.servers[0]
        b = self.servers[1] if len(self.servers) > 1 else ""
        return {
            "cut": f"cut {a}-{b}",
            "one-way": f"cut one way {a}->{b}",
            "isolate-servers": f"isolate {a} from servers",
            "isolate": f"isolate {a} from all",
            "cut-balancer": f"cut lb-{a}",
            "pause": f"pause {a}",
            "kill": f"kill {a}",
            "kill-two": f"kill {a}, then {b}",
            "delay": f"delay {a}-{b} {self.seconds:.2f}s",
        }[self.kind]


def schedule(
    seed: int,
    count: int,
    servers: Sequence[str] = ("s1", "s2", "s3"),
    hold: Tuple[float, float] = (3.0, 8.0),
    kinds: Sequence[str] = KINDS,
    delay: Tuple[float, float] = (0.05, 0.4),
) -> List[Step]:
    """
    C{count} steps drawn from C{seed}: every kind once per round, in a new
    order each round, on servers drawn at random.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"fault kinds: expected some of {', '.join(KINDS)}")
    rng = random.Random(seed)
    steps: List[Step] = []
    while len(steps) < count:
        order = list(kinds)
        rng.shuffle(order)
        for kind in order[: count - len(steps)]:
            pair = tuple(rng.sample(list(servers), 2))
            chosen = pair if kind in ("cut", "one-way", "kill-two", "delay") else pair[:1]
            seconds = round(rng.uniform(*delay), 3) if kind == "delay" else 0.0
            steps.append(Step(kind, chosen, round(rng.uniform(*hold), 2), seconds))
    return steps


class WindowSampler(threading.Thread):
    """
    The largest C{unreplicated} figure each faulty server reports from just
    before its fault until the fault is undone (asked every 0.1 s from
    inside its own host, which no cut touches; a paused server answers
    nothing and keeps its last figure): the most that an async or batched
    run may lose to that fault.
    """

    def __init__(self, lab: Lab, servers):
        super().__init__(daemon=True)
        self.lab = lab
        self.servers = tuple(servers)
        self.largest: Dict[str, int] = {}
        self._done = threading.Event()
        self._sample()

    def _sample(self) -> None:
        for server in self.servers:
            h = self.lab.health(server, timeout=0.2)
            if h is not None:
                self.largest[server] = max(self.largest.get(server, 0), h.get("unreplicated", 0))

    def run(self) -> None:
        while not self._done.wait(0.1):
            self._sample()

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def _until(t: float) -> None:
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


def apply(lab: Lab, step: Step) -> Tuple[float, float]:
    """
    Apply C{step}, hold it, undo it; returns (applied, undone) times.
    """
    a = step.servers[0]
    b = step.servers[1] if len(step.servers) > 1 else None
    others = [s for s in lab.server_names if s != a]
    if step.kind == "kill-two":
        start = lab.kill(a)
        _until(start + RESTART_AFTER)
        lab.restart(a)
        _until(start + KILL_APART)
        second = lab.kill(b)
        _until(second + RESTART_AFTER)
        return start, lab.restart(b)
    if step.kind == "cut":
        start = lab.cut(a, b)
    elif step.kind == "one-way":
        start = lab.cut_one_way(a, b)
    elif step.kind == "isolate-servers":
        start = lab.isolate(a, others)
    elif step.kind == "isolate":
        start = lab.isolate(a)
    elif step.kind == "cut-balancer":
        start = lab.cut("lb", a)
    elif step.kind == "pause":
        start = lab.pause(a)
    elif step.kind == "kill":
        start = lab.kill(a)
    elif step.kind == "delay":
        start = lab.delay(a, b, step.seconds)
    else:
        raise ValueError(f"unknown fault kind {step.kind!r}")
    _until(start + step.hold)
    if step.kind == "pause":
        return start, lab.resume(a)
    if step.kind == "kill":
        return start, lab.restart(a)
    if step.kind == "delay":
        return start, lab.undelay(a, b)
    return start, lab.heal()


@define
class Result:
    report: Report
    faults: List[Fault]
    ops: List[Op] = field(factory=list)
    problems: List[str] = field(factory=list)
    seconds: float = 0.0
    directory: str = ""

    def render(self, title: str = "") -> str:
        text = self.report.render(title)
        for problem in self.problems:
            text += f"\n  PROBLEM: {problem}"
        return text + f"\n  run took {self.seconds:.0f} s; logs in {self.directory}"


def _python_m(lab: Lab, module: str, *args: str) -> List[str]:
    return [lab.python, "-m", module, *args]


def _wait(popen: subprocess.Popen, timeout: float, what: str) -> None:
    try:
        popen.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} did not end within {timeout:.0f} s") from None
    if popen.returncode != 0:
        raise RuntimeError(f"{what} exited with {popen.returncode}")


def run(
    lab: Lab,
    steps: Sequence[Step],
    clients: int = 8,
    sticky: int = 0,
    rate: float = 100.0,
    settle: float = 2.0,
    warmup: float = 2.0,
    timeout: float = 3.0,
    seed: int = 0,
    ready_timeout: float = 60.0,
) -> Result:
    """
    Run the workload on a started C{lab} through C{steps}; heal, read every
    cart back and check.
    """
    began = time.monotonic()
    d = lab.directory
    history, cookies, finals = (os.path.join(d, n) for n in ("history.jsonl", "cookies.json", "final.json"))
    bound = warmup + sum(s.hold + KILL_APART + RESTART_AFTER + settle + 20 for s in steps) + 60
    workload = lab.spawn(
        "workload",
        "c1",
        _python_m(
            lab, "appliance.testing.workload", "run", "--url", lab.balancer_url, "--history", history,
            "--cookies", cookies, "--clients", str(clients), "--sticky", str(sticky), "--rate", str(rate),
            "--timeout", str(timeout), "--duration", str(bound), "--seed", str(seed),
        ),
    )  # fmt: skip
    faults: List[Fault] = []
    problems: List[str] = []
    try:
        _wait_for_sessions(history, clients, workload, ready_timeout)
    except RuntimeError as e:
        problems.append(str(e))
    time.sleep(warmup)
    for n, step in enumerate(steps, 1):
        if workload.poll() is not None:
            problems.append(f"the workload exited early with {workload.returncode}")
            break
        sampler = WindowSampler(lab, step.servers)
        sampler.start()
        try:
            start, end = apply(lab, step)
        finally:
            sampler.stop()
        faults.append(Fault(step.name, start, end, step.servers, sampler.largest))
        try:
            lab.wait_ready(ready_timeout)
        except RuntimeError as e:
            problems.append(f"after fault {n} ({step.name}): {e}")
            break
        time.sleep(settle)
    workload.terminate()
    _wait(workload, timeout + 30, "the workload")
    lab.heal()
    try:
        lab.wait_ready(ready_timeout)
    except RuntimeError as e:
        problems.append(f"before the final read: {e}")
    time.sleep(settle)
    final = lab.spawn(
        "final",
        "c1",
        _python_m(lab, "appliance.testing.workload", "final", "--url", lab.balancer_url, "--cookies", cookies,
                  "--out", finals, "--timeout", str(timeout), "--deadline", "60"),
    )  # fmt: skip
    _wait(final, 90, "the final read")
    ops = load_history(history)
    report = check(ops, load_finals(finals), faults)
    with open(os.path.join(d, "faults.json"), "w") as f:
        json.dump([{"name": x.name, "start": x.start, "end": x.end, "servers": x.servers,
                    "unreplicated": x.unreplicated} for x in faults], f)  # fmt: skip
    return Result(report, faults, ops, problems, time.monotonic() - began, d)


def _wait_for_sessions(history: str, clients: int, workload, timeout: float) -> None:
    """
    Wait until every client has had a write acknowledged (its session
    exists), so that no fault comes before the sessions it should hit: the
    workload's processes may take seconds to start on a loaded machine.
    """
    deadline = time.monotonic() + timeout
    started: set = set()
    while time.monotonic() < deadline and workload.poll() is None:
        if os.path.exists(history):
            with open(history) as f:
                for line in f:
                    if line.endswith("\n"):
                        op = json.loads(line)
                        if op["kind"] == "add" and op["outcome"] == 200:
                            started.add(op["client"])
        if len(started) >= clients:
            return
        time.sleep(0.1)
    raise RuntimeError(f"only {len(started)} of {clients} clients had a write acknowledged before the faults")


def load_history(path: str) -> List[Op]:
    ops = []
    with open(path) as f:
        for line in f:
            if line.strip():
                ops.append(Op.from_record(json.loads(line)))
    return ops


def load_finals(path: str) -> Dict[int, Optional[Items]]:
    with open(path) as f:
        raw = json.load(f)
    return {int(k): (Items.decode(v["items"]) if v.get("items") is not None else None) for k, v in raw.items()}


def run_chaos(
    directory: str,
    replication: str = "sync",
    faults: int = 9,
    seed: int = 1,
    hold: Tuple[float, float] = (3.0, 8.0),
    kinds: Sequence[str] = KINDS,
    servers: int = 3,
    settings: Optional[Dict[str, Dict[str, str]]] = None,
    **options,
) -> Result:
    """
    A lab of its own in C{directory}, C{faults} steps of the seeded schedule,
    the report; the lab is gone when this returns.
    """
    lab = Lab(directory, servers=servers, replication=replication, settings=settings)
    try:
        lab.start()
        steps = schedule(seed, faults, lab.server_names, hold, kinds)
        return run(lab, steps, seed=seed, **options)
    finally:
        lab.stop()
