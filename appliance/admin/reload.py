"""
POST /reload: this process re-reads its configuration file, through the
reloader SIGHUP runs too (L{appliance.reload.Reloader}, set by the plugin
on the process's services), and answers with what changed or the one-line
error that refused the edit (the running configuration stays).
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet import defer
from twisted.web import resource, server

from appliance.admin.web import answer_later, json_body
from appliance.config import ConfigError


class ReloadResource(resource.Resource):
    """
    C{process()}: this process's services (where the reloader is).
    """

    isLeaf = True

    def __init__(self, process: Callable[[], object]):
        super().__init__()
        self.process = process

    def render_POST(self, request):
        reloader = getattr(self.process(), "reloader", None)
        if reloader is None:
            return json_body(request, {"error": "this process has no reloader (not started by twistd appliance)"}, 501)

        def refused(failure):
            failure.trap(ConfigError)
            request.setResponseCode(409)
            return {"pid": os.getpid(), "error": str(failure.value)}

        d = defer.maybeDeferred(reloader.reload)
        d.addCallbacks(lambda changes: {"pid": os.getpid(), "reloaded": changes.summary()}, refused)
        answer_later(request, d)
        return server.NOT_DONE_YET
