"""
Adapters that make a framework's own session API the appliance's session:
L{appliance.integrations.flask}, L{appliance.integrations.django} and
L{appliance.integrations.pyramid}, each needing only its framework (an
optional extra: C{pip install 'appliance[flask]'}).

Every adapter reads the session the session server put in the WSGI environ;
run outside the appliance it fails with L{NotInAppliance}, one sentence that
says so.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from appliance.core.session import SessionData

#: The WSGI environ key under which the session server hands over a session.
ENVIRON_KEY = "appliance.session"


class NotInAppliance(RuntimeError):
    """
    The application runs outside the appliance, so it has no session.
    """


def session_from(environ, adapter: str) -> SessionData:
    """
    The appliance session of a WSGI request, or L{NotInAppliance} naming
    the C{adapter} that needs it.
    """
    session = environ.get(ENVIRON_KEY)
    if session is None:
        raise NotInAppliance(
            f"{adapter} keeps sessions in the appliance, and this request did not come through it: "
            "run the application under `twistd appliance` (mounted by an [app:...] section), "
            "not on its own development server"
        )
    return session


class SessionView(MutableMapping):
    """
    A framework's session object over the appliance's L{SessionData}
    (C{self.data}): reads and writes go straight through, so changes made
    in place are found at commit like any other.
    """

    def __init__(self, data: SessionData):
        self.data = data

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value

    def __delitem__(self, key):
        del self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)

    def __contains__(self, key):
        return key in self.data

    def rotate(self) -> None:
        """
        A new session id at the end of this request, the data kept (call
        it on login).
        """
        self.data.rotate()
