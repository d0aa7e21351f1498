"""
Django sessions backed by the appliance: a session engine and the
middleware it needs, so that C{request.session} is the replicated session
and C{django.contrib.auth} works unchanged.  In C{settings.py}::

    SESSION_ENGINE = "appliance.integrations.django"
    MIDDLEWARE = [
        ...
        "appliance.integrations.django.SessionMiddleware",  # for django.contrib.sessions' own
        ...
    ]

C{login()} rotates the session id (C{cycle_key}), C{logout()} ends the
session on every server (C{flush}), C{set_expiry(seconds | datetime |
timedelta | 0 | None)} sets the session's idle lifetime on every server and
C{get_expiry_age()} reads it.  Changes made in place are detected, so
C{modified} and C{SESSION_SAVE_EVERY_REQUEST} are not needed, and a
response with a 5xx status commits nothing, as with Django's own middleware.

Settings honoured: C{SESSION_COOKIE_AGE}, when the project sets it, is the
default lifetime (otherwise the cluster's C{session_timeout} is);
C{SESSION_COOKIE_SECURE} marks the appliance's cookie C{Secure} even when
served over plain HTTP (behind a TLS front end).  Ignored, because the
cookie is the cluster's own, shared by every application it hosts and read
by its balancers: C{SESSION_COOKIE_NAME}, C{_DOMAIN}, C{_PATH}, C{_HTTPONLY}
(always set), C{_SAMESITE} (always C{Lax}); C{SESSION_EXPIRE_AT_BROWSER_CLOSE}
(the cookie always lasts until the browser closes; lifetimes are kept on the
servers), C{SESSION_SERIALIZER} (values are always JSON),
C{SESSION_SAVE_EVERY_REQUEST}, C{SESSION_FILE_PATH} and
C{SESSION_CACHE_ALIAS}.  C{session_key} is always C{None}: the session's id
is the appliance's, carried in its cookie.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from django.utils import timezone
from django.utils.cache import patch_vary_headers

from appliance.integrations import ENVIRON_KEY, session_from

_EXPIRY = "_session_expiry"
_ADAPTER = "appliance.integrations.django"


class SessionStore(SessionBase):
    """
    One request's session.  Django's own storage calls (C{load}, C{save},
    C{create}, C{delete}) have nothing to do: the appliance loads the
    session before the request and commits it after the response.
    """

    def __init__(self, session_key=None, data=None):
        super().__init__(None)
        self._data = data
        self._flushed = False

    @property
    def _session_cache(self):
        if self._data is None:
            raise_not_in_appliance()
        return self._data

    def clear(self) -> None:
        self._session_cache.clear()
        self.accessed = self.modified = True

    def cycle_key(self) -> None:
        """
        A new session id at the end of this request, the data kept (login).
        """
        self._session_cache.rotate()

    def flush(self) -> None:
        """
        Empty the session and give it a new id (logout, or a login as
        another user); a session left empty at the end of the request is
        removed from every server.
        """
        self.clear()
        self._session_cache.rotate()
        self._flushed = True

    def get_session_cookie_age(self) -> int:
        if settings.is_overridden("SESSION_COOKIE_AGE"):
            return settings.SESSION_COOKIE_AGE
        return int(self._session_cache.default_timeout or settings.SESSION_COOKIE_AGE)

    def lifetime(self):
        """
        The idle lifetime, in seconds, that the session's expiry settings
        give it now (C{None}: the default).
        """
        expiry = self.get(_EXPIRY)
        if not expiry:
            return settings.SESSION_COOKIE_AGE if settings.is_overridden("SESSION_COOKIE_AGE") else None
        if isinstance(expiry, str):
            left = (datetime.fromisoformat(expiry) - timezone.now()).total_seconds()
            return max(1.0, left)
        return expiry

    def finish(self, response) -> None:
        """
        The response is ready: say what the appliance must commit.
        """
        data = self._session_cache
        if self._flushed and not data:
            data.invalidate()
            return
        if data:
            data.timeout = self.lifetime()
        if settings.SESSION_COOKIE_SECURE:
            data.secure_cookie = True

    # Django's storage interface: the appliance does all of it.

    def exists(self, session_key) -> bool:
        return False

    def create(self) -> None:
        self.modified = True

    def save(self, must_create: bool = False) -> None:
        self.modified = True

    def delete(self, session_key=None) -> None:
        self.flush()

    def load(self) -> dict:
        return dict(self._session_cache)

    @classmethod
    def clear_expired(cls) -> None:
        """
        Nothing to clear: the appliance expires sessions itself.
        """


def raise_not_in_appliance():
    session_from({}, _ADAPTER)


class SessionMiddleware:
    """
    Replaces C{django.contrib.sessions.middleware.SessionMiddleware}: gives
    each request its appliance session and sets no cookie of Django's own.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Outside the appliance, every use of the session (Django's error
        # page included) says so in one sentence.
        request.session = SessionStore(data=request.environ.get(ENVIRON_KEY))
        session_from(request.environ, _ADAPTER)
        response = self.get_response(request)
        request.session.finish(response)
        if request.session.accessed:
            # As Django's own: a page that read the session is per visitor.
            patch_vary_headers(response, ("Cookie",))
        return response
