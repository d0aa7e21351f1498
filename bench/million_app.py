"""
The application of bench/million.py: one request makes a session of about
C{SIZE} bytes of JSON, another reads it back.

    POST /fill   200; the session gets a ~1 KB value (a new session without a cookie)
    GET  /fill   200 {"n": the value's length} (404 without a session)
"""

from __future__ import annotations

import json

SIZE = 1000
_BLOB = "x" * (SIZE - 20)


def app(environ, start_response):
    session = environ["appliance.session"]
    if environ["REQUEST_METHOD"] == "POST":
        session["blob"] = _BLOB
        session["n"] = session.get("n", 0) + 1
        body = b'{"ok":true}'
        status = "200 OK"
    elif "blob" in session:
        body = json.dumps({"n": len(session["blob"])}).encode()
        status = "200 OK"
    else:
        body = b'{"error":"no session"}'
        status = "404 Not Found"
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
