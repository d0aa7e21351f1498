"""
A page for the browser test: its script walks the demo cart (two POSTs,
then a GET) with the browser's own cookies and writes what the cart holds,
or what went wrong, into the page.
"""

from __future__ import annotations

PAGE = b"""<!doctype html>
<html><head><title>cart</title></head><body><p id="out">waiting</p><script>
const out = document.getElementById("out");
const add = (item) => fetch("/cart/items", {
  method: "POST",
  headers: {"Content-Type": "application/x-www-form-urlencoded"},
  body: "item=" + item,
}).then((r) => { if (!r.ok) throw new Error("POST " + r.status); });
add("apple")
  .then(() => add("pear"))
  .then(() => fetch("/cart"))
  .then((r) => r.json())
  .then((cart) => { out.textContent = "cart:" + cart.items.join(","); })
  .catch((e) => { out.textContent = "failed:" + e; });
</script></body></html>
"""


def page(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(PAGE)))])
    return [PAGE]
