"""
Pyramid sessions backed by the appliance: an C{ISession} factory.

    config.set_session_factory(appliance.integrations.pyramid.session_factory)

C{request.session} is the replicated session.  C{invalidate()} ends it on
every server, C{changed()} is accepted but not needed (changes made in
place are detected anyway), flash messages and CSRF tokens live in the
session like any value; C{rotate()} gives the session a new id (call it on
login).
"""

from __future__ import annotations

import secrets
import time

from pyramid.interfaces import ISession, ISessionFactory
from zope.interface import implementer, provider

from appliance.integrations import SessionView, session_from

_CREATED = "_pyramid_created"
_FLASH = "_f_"
_CSRF = "_csrft_"


@implementer(ISession)
class ApplianceSession(SessionView):
    def __init__(self, request):
        super().__init__(session_from(request.environ, "appliance.integrations.pyramid"))
        self.new = len(self.data) == 0
        self._created = time.time()

    @property
    def created(self) -> float:
        return self.data.get(_CREATED, self._created)

    def __setitem__(self, key, value):
        if self.new and _CREATED not in self.data:
            self.data[_CREATED] = self._created
        self.data[key] = value

    def invalidate(self) -> None:
        """
        End the session on every server; the rest of this request sees it empty.
        """
        self.data.clear()
        self.data.invalidate()

    def changed(self) -> None:
        """
        Nothing to do: changes made in place are found at commit.
        """

    def flash(self, msg, queue: str = "", allow_duplicate: bool = True) -> None:
        storage = self.setdefault(_FLASH + queue, [])
        if allow_duplicate or msg not in storage:
            storage.append(msg)

    def pop_flash(self, queue: str = "") -> list:
        return self.pop(_FLASH + queue, [])

    def peek_flash(self, queue: str = "") -> list:
        return self.get(_FLASH + queue, [])

    def new_csrf_token(self) -> str:
        token = secrets.token_hex(20)
        self[_CSRF] = token
        return token

    def get_csrf_token(self) -> str:
        token = self.get(_CSRF)
        return token if token is not None else self.new_csrf_token()


@provider(ISessionFactory)
def session_factory(request) -> ApplianceSession:
    return ApplianceSession(request)
