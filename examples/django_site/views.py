"""
The example site's pages: JSON, so that scripts (and the tests) read them
easily.  Everything kept between requests is in C{request.session}.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.views.decorators.http import require_POST


def home(request):
    user = request.user.get_username() if request.user.is_authenticated else None
    return JsonResponse(
        {
            "user": user,
            "notes": request.session.get("notes", []),
            "expiry_age": request.session.get_expiry_age(),
            "csrf": get_token(request),
        }
    )


@require_POST
@login_required
def add_note(request):
    text = request.POST.get("text", "")
    if not 0 < len(text) <= 200:
        return JsonResponse({"error": "form field text: 1-200 characters"}, status=400)
    request.session.setdefault("notes", []).append(text)
    return JsonResponse({"notes": request.session["notes"]})


@require_POST
@login_required
def expiry(request):
    request.session.set_expiry(int(request.POST.get("seconds", "0")))
    return JsonResponse({"expiry_age": request.session.get_expiry_age()})
