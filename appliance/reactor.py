"""
The reactor the appliance's processes run on: Twisted's epoll reactor,
with each ready descriptor handed to its handler directly.

Twisted's epoll reactor runs every event through C{log.callWithLogger},
which asks the descriptor for its log prefix and pushes a legacy logging
context around the call (two dictionaries, a copy and an update, four
calls deep).  Nothing here reads that context: the appliance logs with
L{twisted.logger}, whose lines (L{appliance.logs}) never show the legacy
C{system} field.  On the balancer's path (two events per request) it
cost more CPU than the balancer's own Python: C{bench/balancer.py
--backend nginx --baseline DIR}, DIR the code before this reactor, gave
32.0 against 37.6 us of CPU per request on CPython 3.11 and 24.5 against
27.6 on PyPy (the README, Benchmarks).

What the wrapping also did is kept: an error that escapes a descriptor's
handling is logged and the loop goes on with the next descriptor.

C{twistd appliance} runs on this reactor unless one was chosen first
(C{twistd --reactor=...}, or a module that imported the global reactor):
L{install_unless_chosen}, called by L{appliance.tap.makeService}.
"""

from __future__ import annotations

import errno
import sys

from twisted.internet import epollreactor, main
from twisted.logger import Logger

log = Logger()


class ApplianceReactor(epollreactor.EPollReactor):
    """
    L{epollreactor.EPollReactor} without the per-event logging context.
    """

    def doPoll(self, timeout):
        if timeout is None:
            timeout = -1  # wait until something happens
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        handle = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            try:
                handle(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                log.failure("handling an event of {selectable!r}", selectable=selectable)

    doIteration = doPoll


def install() -> ApplianceReactor:
    reactor = ApplianceReactor()
    main.installReactor(reactor)
    return reactor


def install_unless_chosen() -> bool:
    """
    Install L{ApplianceReactor} as the global reactor unless a reactor is
    installed already; whether it was.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
