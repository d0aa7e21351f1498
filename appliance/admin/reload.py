"""
POST /reload: this process re-reads its configuration file.  The process's
reloader (C{reloader} of its top service, L{appliance.service}) does it and
reports what changed, or the one-line error that refused the edit.  A
process whose top service has no reloader but that handles SIGHUP gets the
signal instead (it answers before the reload runs).
"""

from __future__ import annotations

import os
import signal
from typing import Callable

from twisted.internet import defer
from twisted.web import resource, server

from appliance.admin.web import answer_later, json_body
from appliance.config import ConfigError


class ReloadResource(resource.Resource):
    """
    C{process()}: the top service of this process (where the reloader is).
    """

    isLeaf = True

    def __init__(self, process: Callable[[], object]):
        super().__init__()
        self.process = process

    def render_POST(self, request):
        reloader = getattr(self.process(), "reloader", None)
        if reloader is None:
            if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, signal.SIG_IGN, None):
                return json_body(request, {"error": "this process does not reload (no SIGHUP handler)"}, 501)
            os.kill(os.getpid(), signal.SIGHUP)
            return json_body(request, {"pid": os.getpid(), "signalled": "SIGHUP"}, 202)

        def done(changes):
            summary = changes.summary() if hasattr(changes, "summary") else str(changes)
            return {"pid": os.getpid(), "reloaded": summary}

        def refused(failure):
            failure.trap(ConfigError)
            request.setResponseCode(409)
            return {"pid": os.getpid(), "error": str(failure.value)}

        d = defer.maybeDeferred(reloader.reload).addCallbacks(done, refused)
        answer_later(request, d)
        return server.NOT_DONE_YET
