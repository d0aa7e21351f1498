"""
The session server role: hosting applications with their sessions.
"""

from appliance.server.hosting import session_of

__all__ = ["session_of"]
