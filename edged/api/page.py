"""The status page at ``/``: static files shipped in the package, and the sign-in routes.

No build step and nothing from a CDN: ``edged/static`` holds the HTML, CSS and JavaScript
as served. The page reads ``/v1/status`` and follows ``/v1/events`` with its session cookie.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from edged.api import session

STATIC = resources.files("edged") / "static"
PAGES = {"/": "index.html", "/report": "report.html"}
ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "report.js": "text/javascript",
          "index.html": "text/html", "report.html": "text/html"}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self';"
    " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none';"
    " form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> web.Response:
    kind = ASSETS.get(name)
    if kind is None:
        raise web.HTTPNotFound()
    text = (STATIC / name).read_text(encoding="utf-8")
    return web.Response(text=text, content_type=kind, charset="utf-8", headers=HEADERS)


async def page(request: web.Request) -> web.StreamResponse:
    return _file(PAGES[request.path])


async def asset(request: web.Request) -> web.StreamResponse:
    return _file(request.match_info["name"])


def add_routes(app: web.Application) -> None:
    for path in PAGES:
        app.router.add_get(path, page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_post("/session", session.sign_in)
    app.router.add_get("/session", session.whoami)
    app.router.add_delete("/session", session.sign_out)
