"""
A Pyramid application for the adapter tests (the Flask and Django ones are
the shipped examples): it keeps a counter, flash messages and a CSRF token
in its session, and logs out.
"""

from __future__ import annotations

from pyramid.config import Configurator
from pyramid.response import Response

from appliance.integrations.pyramid import session_factory


def _count(request):
    session = request.session
    session["count"] = session.get("count", 0) + 1
    session.flash(f"visit {session['count']}")
    if request.params.get("rotate"):
        session.rotate()
    return Response(json_body={"count": session["count"], "new": session.new})


def _flashes(request):
    session = request.session
    return Response(json_body={"peek": session.peek_flash(), "pop": session.pop_flash(), "after": session.peek_flash()})


def _csrf(request):
    session = request.session
    token = session.get_csrf_token()
    return Response(json_body={"token": token, "same": token == session.get_csrf_token()})


def _logout(request):
    request.session.invalidate()
    return Response(json_body={"left": len(request.session)})


def make_pyramid_app():
    with Configurator() as config:
        config.set_session_factory(session_factory)
        for name, view in (("count", _count), ("flashes", _flashes), ("csrf", _csrf), ("logout", _logout)):
            config.add_route(name, "/" + name)
            config.add_view(view, route_name=name)
        return config.make_wsgi_app()


pyramid_app = make_pyramid_app()
