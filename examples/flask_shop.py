"""
A small Flask shop whose sessions live in the appliance.  It is a plain
Flask application: the one line marked below is all the appliance needs.

    GET  /shop/            {"user": ..., "cart": [...], "flashes": [...]}
    POST /shop/login       form user, password, remember; 200 or 401
    POST /shop/cart        form item (logged in); the new cart
    POST /shop/logout      the session ends everywhere

Mount it on the cluster with::

    [app:shop]
    mount = /shop
    wsgi = examples.flask_shop:app
"""

from __future__ import annotations

import hmac

from flask import Flask, flash, get_flashed_messages, jsonify, request, session

from appliance.integrations.flask import ApplianceSessionInterface

app = Flask(__name__)
app.secret_key = "the appliance signs nothing; Flask's own session would"
app.session_interface = ApplianceSessionInterface()  # the appliance's one line

#: The shop's customers (a real shop has a database).
USERS = {"ann": "apple-pie", "bob": "blueberry"}


@app.get("/")
def index():
    return jsonify(user=session.get("user"), cart=session.get("cart", []), flashes=get_flashed_messages())


@app.post("/login")
def login():
    user = request.form.get("user", "")
    password = USERS.get(user)
    if password is None or not hmac.compare_digest(password, request.form.get("password", "")):
        return jsonify(error="unknown user or wrong password"), 401
    rotate = getattr(session, "rotate", None)
    if rotate is not None:
        rotate()  # a new session id on login (no session fixation)
    session["user"] = user
    session.permanent = request.form.get("remember") == "yes"
    flash(f"welcome, {user}")
    return jsonify(user=user)


@app.post("/cart")
def add_to_cart():
    if "user" not in session:
        return jsonify(error="log in first"), 403
    item = request.form.get("item", "")
    if not 0 < len(item) <= 200:
        return jsonify(error="form field item: 1-200 characters"), 400
    session.setdefault("cart", []).append(item)
    return jsonify(cart=session["cart"])


@app.post("/logout")
def logout():
    session.clear()
    return jsonify(logged_out=True)
