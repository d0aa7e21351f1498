"""
The example site as a WSGI application::

    [app:site]
    mount = /site
    wsgi = examples.django_site.wsgi:application
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_site.settings")
application = get_wsgi_application()
