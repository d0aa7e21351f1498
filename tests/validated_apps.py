"""
Every shipped application wrapped in the standard library's WSGI
validator, which raises (or warns) as soon as the server or the
application breaks PEP 3333.
"""

from __future__ import annotations

from wsgiref.validate import validator

from appliance.demo.cart import app as _cart
from examples.django_site.wsgi import application as _site
from examples.flask_shop import app as _shop

cart = validator(_cart)
shop = validator(_shop)
site = validator(_site)
