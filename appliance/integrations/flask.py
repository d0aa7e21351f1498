"""
Flask sessions backed by the appliance: C{flask.session} I{is} the
replicated session.

    from appliance.integrations.flask import ApplianceSessionInterface
    app.session_interface = ApplianceSessionInterface()

No cookie of Flask's own is set (the appliance's cookie names the session);
C{session.permanent = True} gives the session C{PERMANENT_SESSION_LIFETIME}
as its idle lifetime on every server, and C{False} the cluster's default;
C{session.modified} is accepted but not needed, as changes made in place
are detected anyway.  C{session.rotate()} gives the session a new id (call
it on login); a session left empty (C{session.clear()}) or
C{session.invalidate()} ends it on every server.
"""

from __future__ import annotations


from flask.sessions import SessionInterface, SessionMixin

from appliance.integrations import SessionView, session_from


class ApplianceSession(SessionView, SessionMixin):
    """
    The appliance's session under Flask's session API.
    """

    def invalidate(self) -> None:
        """
        End the session everywhere (logout).
        """
        self.data.invalidate()


class ApplianceSessionInterface(SessionInterface):
    def open_session(self, app, request) -> ApplianceSession:
        return ApplianceSession(session_from(request.environ, "appliance.integrations.flask"))

    def save_session(self, app, session: ApplianceSession, response) -> None:
        # The appliance commits the session and sets its cookie; all that is
        # Flask's to say is the lifetime.
        data = session.data
        if not data:
            if data.stored:
                # Emptied (session.clear() on logout): it ends everywhere.
                data.invalidate()
            return
        data.timeout = app.permanent_session_lifetime.total_seconds() if session.permanent else None
