"""
Logs: the text and JSON observers (fed through twisted.logger), the
supervisor's pass-through of its children's lines, L{Tally}'s one line
per burst, the config key, and the all-in-one's log from real processes.
"""

from __future__ import annotations

import io
import json
import os
import re

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.runner.procmon import LineLogger
from twisted.trial.unittest import SynchronousTestCase

from appliance import logs
from appliance.config import ClusterConfig, ConfigError

from .helpers import RealNodes, cluster_ini, free_ports, http, session_call, spawn, twistd, wait_for, write

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TEXT = re.compile(rf"^({STAMP}) (\S+) (debug|info|warn|error|critical) (\S+): ")


def observed(log_format: str, name: str = "s1"):
    """
    A publisher whose only observer is ours, writing into a StringIO;
    returns (logger, output).
    """
    out = io.StringIO()
    publisher = LogPublisher(logs.ApplianceObserver(out, name, log_format))
    return Logger(namespace="appliance.test", observer=publisher), out


class ObserverTests(SynchronousTestCase):
    def test_text_line(self):
        """A text event is one line: a UTC timestamp, the node's name, the level, the namespace, the message."""
        log, out = observed("text")
        log.warn("peer {peer} lost: {n} sessions", peer="s2", n=3)
        (line,) = out.getvalue().splitlines()
        m = TEXT.match(line)
        self.assertIsNotNone(m, line)
        self.assertEqual(m.groups()[1:], ("s1", "warn", "appliance.test"))
        self.assertTrue(line.endswith(": peer s2 lost: 3 sessions"), line)

    def test_text_traceback_is_tab_led(self):
        """A failure's traceback follows its line on tab-led lines, so that no line of it looks like an event."""
        log, out = observed("text")
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("committing failed", Failure())
        first, *rest = out.getvalue().splitlines()
        self.assertIsNotNone(TEXT.match(first))
        self.assertTrue(rest and all(line.startswith("\t") for line in rest), rest)
        self.assertIn("ZeroDivisionError", rest[-1])

    def test_json_object_per_line(self):
        """A JSON event is one object on one line with the documented fields, in order, and its named fields."""
        log, out = observed("json")
        log.info("took {n} sessions over from {source}", n=4, source="s3", address=object())
        (line,) = out.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(list(record), ["time", "node", "level", "namespace", "text", "fields"])
        self.assertRegex(record["time"], f"^{STAMP}$")
        self.assertEqual(
            (record["node"], record["level"], record["namespace"], record["text"]),
            ("s1", "info", "appliance.test", "took 4 sessions over from s3"),
        )
        self.assertEqual((record["fields"]["n"], record["fields"]["source"]), (4, "s3"))
        self.assertIsInstance(record["fields"]["address"], str)

    def test_json_failure(self):
        """A JSON event with a failure carries the traceback in one field and stays on one line."""
        log, out = observed("json")
        try:
            {}["missing"]
        except KeyError:
            log.failure("lookup failed", Failure())
        (line,) = out.getvalue().splitlines()
        self.assertIn("KeyError", json.loads(line)["failure"])

    def test_unknown_format_refused(self):
        """An observer cannot be made for a format that does not exist."""
        self.assertRaises(ValueError, logs.ApplianceObserver, io.StringIO(), "s1", "xml")

    def test_process_names(self):
        """A process is named by its node, its section, or as the supervisor."""
        self.assertEqual(
            [logs.process_name("s2", None), logs.process_name(None, "balancer:lb1"), logs.process_name(None, "dns"),
             logs.process_name(None, None)],
            ["s2", "lb1", "dns", "supervisor"],
        )


class PassThroughTests(SynchronousTestCase):
    """
    The supervisor's ProcessMonitor turns each child line into an event;
    fed through procmon's own LineLogger here.
    """

    def feed(self, log_format: str, data: bytes, stream: str = "stdout") -> list:
        out = io.StringIO()

        class Monitor:
            log = Logger(namespace="twisted.runner.procmon.ProcessMonitor", observer=LogPublisher(logs.ApplianceObserver(out, logs.SUPERVISOR, log_format)))

        receiver = LineLogger()
        receiver.tag, receiver.stream, receiver.service = "s2", stream, Monitor
        receiver.dataReceived(data)
        return out.getvalue().splitlines()

    def test_child_text_lines_unchanged(self):
        """A child's text lines (and its traceback's tab-led lines) pass through with no second timestamp."""
        child, child_out = observed("text", "s2")
        child.info("session server on http://127.0.0.1:1")
        child_out.write("\tTraceback line\n")
        lines = child_out.getvalue().splitlines()
        self.assertEqual(self.feed("text", ("\n".join(lines) + "\n").encode()), lines)

    def test_child_json_lines_unchanged(self):
        """A child's JSON lines pass through as they are."""
        child, child_out = observed("json", "s2")
        child.info("replication link to {peer} up", peer="s1")
        (line,) = child_out.getvalue().splitlines()
        self.assertEqual(self.feed("json", (line + "\n").encode()), [line])

    def test_other_child_output_becomes_an_event(self):
        """Output a child wrote outside its logging (a crash, a startup error) is one event named after the child."""
        (line,) = self.feed("text", b"appliance: cluster.ini: [node:s2] rakc: unknown key\n", stream="stderr")
        m = TEXT.match(line)
        self.assertEqual(m.groups()[1:], ("s2", "error", "stderr"))
        self.assertTrue(line.endswith(": appliance: cluster.ini: [node:s2] rakc: unknown key"))
        (line,) = self.feed("json", b"Traceback (most recent call last):\n")
        record = json.loads(line)
        self.assertEqual((record["node"], record["level"], record["text"]), ("s2", "info", "Traceback (most recent call last):"))


class TallyTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = []
        self.log = Logger(namespace="appliance.test", observer=self.events.append)
        self.tally = logs.Tally(self.clock, self.log, "took {n} sessions over from {source}", quiet=1.0, longest=10.0)

    def lines(self):
        return sorted(e["log_format"].format(**e) for e in self.events)

    def test_one_line_per_burst(self):
        """A burst of events is one line with the count, written once the burst has been quiet a while."""
        for _ in range(500):
            self.tally.add(source="s1")
            self.clock.advance(0.01)
        self.assertEqual(self.events, [])
        self.clock.advance(1.0)
        self.assertEqual(self.lines(), ["took 500 sessions over from s1"])

    def test_fields_counted_apart(self):
        """Events with other fields (another peer) are counted apart, each on its own line."""
        self.tally.add(source="s1")
        self.tally.add(source="s2")
        self.tally.add(source="s1")
        self.clock.advance(1.0)
        self.assertEqual(self.lines(), ["took 1 sessions over from s2", "took 2 sessions over from s1"])

    def test_longest_bounds_the_wait(self):
        """A burst that never pauses is still written after longest seconds, then counts on."""
        for _ in range(120):
            self.tally.add(source="s1")
            self.clock.advance(0.5)
        self.assertEqual(self.events[0]["n"], 20, "written at 10 s, before the 21st event")
        self.assertTrue(all(e["log_level"] == LogLevel.info for e in self.events))
        self.tally.flush()
        self.assertEqual(sum(e["n"] for e in self.events), 120)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_writes_now(self):
        """flush writes what is counted at once and leaves nothing scheduled."""
        self.tally.add(source="s3")
        self.tally.flush()
        self.assertEqual(self.lines(), ["took 1 sessions over from s3"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.tally.flush()
        self.assertEqual(len(self.events), 1)


class ConfigTests(SynchronousTestCase):
    def test_log_format(self):
        """[cluster] log_format is text by default, json when asked, anything else one line naming the key."""
        text, _ = cluster_ini(names=("s1",))
        self.assertEqual(ClusterConfig.from_string(text).cluster.log_format, "text")
        text, _ = cluster_ini(names=("s1",), extra="log_format = json")
        self.assertEqual(ClusterConfig.from_string(text).cluster.log_format, "json")
        text, _ = cluster_ini(names=("s1",), extra="log_format = xml")
        with self.assertRaises(ConfigError) as caught:
            ClusterConfig.from_string(text, "c.ini")
        self.assertEqual(str(caught.exception), "c.ini: [cluster] log_format: must be one of text, json (got 'xml')")


class AllInOneLogTests(SynchronousTestCase):
    """
    twistd -n appliance, every session server a supervised child: its
    output is the supervisor's lines and its children's, each once.
    """

    def run_cluster(self, log_format: str) -> list:
        lb_port, = free_ports(1)
        balancer = f"\n[balancer:lb1]\nlisten = 127.0.0.1:{lb_port}\nhealth_interval = 250ms\n"
        text, ports = cluster_ini(extra=f"log_format = {log_format}", balancer=balancer)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "appliance.log")
        proc = spawn(self, twistd("--config", write(os.path.join(folder, "cluster.ini"), text)), path)
        wait_for(lambda: http("GET", f"http://127.0.0.1:{lb_port}/cart")[0] == 200, 60, "the cart through the balancer")

        def logged():
            with open(path, errors="replace") as f:
                return f.read()

        if log_format == "text":
            link_up = re.compile(r"^\S+ (s\d) info appliance\.replication\.link: replication link to s\d up$", re.M)
        else:
            link_up = re.compile(r'^\{"time": "[^"]+", "node": "(s\d)", "level": "info", "namespace": "appliance\.replication\.link",'
                                 r' "text": "replication link to s\d up"', re.M)
        wait_for(lambda: set(link_up.findall(logged())) == set(ports), 60, "every node's links up, logged")
        os.killpg(proc.pid, 15)
        proc.wait(30)
        lines = [line for line in logged().splitlines() if line.strip()]
        self.assertTrue(lines)
        return lines, sorted(ports)

    def test_text(self):
        """In text, every line of the all-in-one's log has one timestamp and names its process once."""
        lines, names = self.run_cluster("text")
        seen = set()
        for line in lines:
            if line.startswith("\t"):
                continue
            m = TEXT.match(line)
            self.assertIsNotNone(m, line)
            self.assertEqual(len(re.findall(STAMP, line)), 1, line)
            seen.add(m.group(2))
        self.assertEqual(seen, {"supervisor", *names})
        started = [line for line in lines if "session server on http://" in line]
        self.assertEqual(sorted(TEXT.match(line).group(2) for line in started), names)
        for line in started:
            self.assertEqual(sum(line.count(name) for name in names), 1, line)
        linked = {TEXT.match(line).group(2) for line in lines if re.search(r": replication link to s\d up$", line)}
        self.assertEqual(sorted(linked), names)

    def test_json(self):
        """In json, every line of the all-in-one's log is one object with one time and its process's name."""
        lines, names = self.run_cluster("json")
        records = [json.loads(line) for line in lines]
        for line, record in zip(lines, records):
            self.assertEqual(len(re.findall(STAMP, line)), 1, line)
            self.assertEqual(list(record)[:6], ["time", "node", "level", "namespace", "text", "fields"])
        self.assertEqual({r["node"] for r in records}, {"supervisor", *names})
        linked = {r["node"] for r in records if re.fullmatch(r"replication link to s\d up", r["text"])}
        self.assertEqual(sorted(linked), names)
        started = sorted(r["node"] for r in records if r["text"].startswith("session server on http://"))
        self.assertEqual(started, names)


class FailoverLogTests(SynchronousTestCase):
    def test_failover_logged_once_with_the_count(self):
        """After kill -9 of a primary of many sessions, the servers log its failover in a few counted lines, no session id."""
        nodes = RealNodes(self)
        cookies = []
        for i in range(12):
            status, body, cookie = session_call("POST", nodes.url("s1", "/cart/items"), None, {"item": f"i{i}"})
            self.assertEqual((status, cookie.split("!")[1]), (200, "s1"))
            cookies.append(cookie)
        nodes.kill("s1")
        for cookie in cookies:
            status, body, _ = session_call("GET", nodes.url("s2", "/cart"), cookie)
            self.assertEqual(status, 200, body)
        moved = re.compile(r"(promoted|took) (\d+) (of its )?sessions")

        def counted():
            return [int(m.group(2)) for name in ("s2", "s3") for m in moved.finditer(nodes.log(name))]

        wait_for(lambda: sum(counted()) >= 12, 30, "the moves of all 12 sessions logged")
        self.assertLessEqual(len([n for n in counted() if n]), 6, counted())
        for name in ("s2", "s3"):
            log = nodes.log(name)
            for cookie in cookies:
                self.assertNotIn(cookie.split("!")[0], log)
