"""
One line per event, the process's name once: the log observers of
C{[cluster] log_format} (C{text} or C{json}), and L{Tally}, which turns
an event that happens to many sessions at once into one line with their
count.

A process names itself by its role: a session server by its node's name,
a C{--section} child by its section's (C{lb1}, C{dns}), the all-in-one
supervisor C{supervisor}.  The supervisor passes its children's lines
through as they are (L{ApplianceObserver}): they already carry their
time and their name, so a line never gets a second timestamp.

text: C{2026-12-02T05:33:56.123Z s1 info appliance.server.service: message};
the lines of a traceback follow, each starting with a tab.

json, one object per line, keys in this order:

    time       ISO 8601 UTC with milliseconds
    node       the process's name (as above)
    level      debug | info | warn | error | critical
    namespace  the logger's namespace (a module, or log_legacy)
    text       the formatted message
    fields     the event's named fields (values JSON can hold, else str())
    failure    the traceback, only when the event carries one
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Callable, Dict, Optional, TextIO, Tuple

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

FORMATS = ("text", "json")

#: The name of the all-in-one supervisor's lines.
SUPERVISOR = "supervisor"

_PROCMON = "[{tag}] {line}"
_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ ")
_JSON_LINE = '{"time": '
_LEGACY = frozenset(("message", "isError", "system", "time", "format", "failure", "why", "printed"))


def process_name(node: Optional[str], section: Optional[str]) -> str:
    """
    How this process names itself in its lines: C{--node NAME}, the name
    of C{--section balancer:NAME} (or C{dns}), else the supervisor.
    """
    if section is not None:
        return section.partition(":")[2] or section
    if node is not None:
        return node
    return SUPERVISOR


def _timestamp(when: float) -> str:
    seconds = int(when)
    millis = int((when - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _failure_text(event: dict) -> Optional[str]:
    failure = event.get("log_failure")
    if failure is None:
        return None
    try:
        return failure.getTraceback().rstrip("\n")
    except Exception as e:
        return f"(cannot render the traceback: {e!r})"


def _json_value(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def text_line(event: dict, name: str) -> str:
    """
    The text line of C{event} (tab-led continuation lines for a multi-line
    message or a traceback), without the final newline.
    """
    level = event.get("log_level") or LogLevel.info
    text = formatEvent(event)
    failure = _failure_text(event)
    if failure is not None:
        text = f"{text}\n{failure}"
    head = f"{_timestamp(event.get('log_time') or time.time())} {name} {level.name} {event.get('log_namespace', '-')}: "
    return head + text.replace("\n", "\n\t")


def json_line(event: dict, name: str) -> str:
    """
    The JSON object of C{event} on one line (no final newline).
    """
    level = event.get("log_level") or LogLevel.info
    record = {
        "time": _timestamp(event.get("log_time") or time.time()),
        "node": name,
        "level": level.name,
        "namespace": event.get("log_namespace", "-"),
        "text": formatEvent(event),
        "fields": {
            k: _json_value(v) for k, v in event.items() if not k.startswith("log_") and k not in _LEGACY
        },
    }
    failure = _failure_text(event)
    if failure is not None:
        record["failure"] = failure
    return json.dumps(record, ensure_ascii=False)


_RENDER: Dict[str, Callable[[dict, str], str]] = {"text": text_line, "json": json_line}


def own_line(line: str, log_format: str) -> bool:
    """
    Whether C{line}, read from a child's output, is one of the lines a
    child writes in C{log_format} (so it passes through as it is).
    """
    if log_format == "json":
        return line.startswith(_JSON_LINE)
    return line.startswith("\t") or _TEXT_LINE.match(line) is not None


@implementer(ILogObserver)
class ApplianceObserver:
    """
    Writes every event to C{out} as one line of C{log_format}, named
    C{name}.  A line a supervised child wrote (an event of
    L{twisted.runner.procmon}'s line logger) that is already such a line
    is written as it is; any other child output (a crash before its
    logging began, say) becomes an event of its own named after the
    child, at C{error} level when it came on stderr.  C{log_format} may be
    changed while running (a reload).
    """

    def __init__(self, out: TextIO, name: str, log_format: str = "text"):
        if log_format not in FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(FORMATS)}")
        self.out = out
        self.name = name
        self.log_format = log_format

    def __call__(self, event: dict) -> None:
        line = self._child_line(event)
        if line is None:
            line = _RENDER[self.log_format](event, self.name)
        self.out.write(line + "\n")
        self.out.flush()

    def _child_line(self, event: dict) -> Optional[str]:
        if event.get("log_format") != _PROCMON or "line" not in event or "tag" not in event:
            return None
        line = event["line"]
        if own_line(line, self.log_format):
            return line
        raw = {
            "log_time": event.get("log_time"),
            "log_level": LogLevel.error if event.get("stream") == "stderr" else LogLevel.info,
            "log_namespace": event.get("stream", "stdout"),
            "log_format": "{line}",
            "line": line,
        }
        return _RENDER[self.log_format](raw, event["tag"])


def for_twistd(server_options, log_format: str, name: str) -> Optional[ApplianceObserver]:
    """
    The observer of a process started by twistd with C{server_options}
    (the twistd options holding ours): on its C{--logfile} (C{-}: stdout),
    on stdout without one under C{--nodaemon}, else on twistd.log, as
    twistd itself would; C{None} when C{--logger} or C{--syslog} chose
    another observer.
    """
    options = server_options if server_options is not None else {}
    if options.get("logger") or options.get("syslog"):
        return None
    path = options.get("logfile") or ""
    if path == "-" or (not path and (options.get("nodaemon") or server_options is None)):
        return ApplianceObserver(sys.stdout, name, log_format)
    from twisted.python.logfile import LogFile

    return ApplianceObserver(LogFile.fromFullPath(path or "twistd.log"), name, log_format)


class Tally:
    """
    One kind of event that happens to sessions one at a time (a takeover,
    a promotion, a fencing) logged as one line with the count: the first
    event opens a tally, which is written once C{quiet} seconds pass
    without another, and at the latest C{longest} seconds after it opened.
    Events with different C{fields} (another peer, say) are counted apart;
    C{text} names them and C{n}, the count.
    """

    def __init__(self, clock, logger, text: str, level: LogLevel = LogLevel.info, quiet: float = 1.0, longest: float = 10.0):
        self.clock = clock
        self.logger = logger
        self.text = text
        self.level = level
        self.quiet = quiet
        self.longest = longest
        self._counts: Dict[Tuple, int] = {}
        self._opened = 0.0
        self._call = None

    def add(self, **fields) -> None:
        """
        Count one event with these C{fields}.
        """
        key = tuple(sorted(fields.items()))
        self._counts[key] = self._counts.get(key, 0) + 1
        now = self.clock.seconds()
        if self._call is None:
            self._opened = now
            self._call = self.clock.callLater(self.quiet, self.flush)
        elif self._call.active():
            self._call.reset(max(0.0, min(self.quiet, self._opened + self.longest - now)))

    def flush(self) -> None:
        """
        Write the open tally now (if any): one line per set of fields.
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        counts, self._counts = self._counts, {}
        for key, n in counts.items():
            self.logger.emit(self.level, self.text, n=n, **dict(key))
