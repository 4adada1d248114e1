"""The proxy a store's box reaches the internet through, as the environment names it.

``HTTPS_PROXY`` / ``HTTP_PROXY`` (or their lowercase forms) for the URL's scheme, and
``NO_PROXY`` for the hosts that stay direct, read as curl, httpx and requests read them
(Python's own ``urllib.request``). The proxy's credentials, if any, stay in its URL
(``http://user:secret@proxy:3128``): aiohttp sends them as ``Proxy-Authorization``. Only the
environment is read (no file, no thread), once per origin: it does not change while the
daemon runs. Every processor and Shopify client takes its proxy from here.
"""

from __future__ import annotations

from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass


class ProxyLookup:
    """The proxy for each origin (scheme, host, port), looked up once."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str, int | None], str | None] = {}

    def __call__(self, url: str) -> str | None:
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname or "", parts.port)
        if origin not in self._found:
            self._found[origin] = proxy_for(url)
        return self._found[origin]


def proxy_for(url: str) -> str | None:
    """The proxy URL for ``url`` from the environment, or None (none set, or ``NO_PROXY``
    names its host)."""
    parts = urlsplit(url)
    proxies = getproxies_environment()
    proxy = proxies.get(parts.scheme)
    if not proxy:
        return None
    host = parts.hostname or ""
    where = f"{host}:{parts.port}" if parts.port is not None else host
    if proxy_bypass(where):  # on Linux: NO_PROXY (urllib's proxy_bypass_environment)
        return None
    return proxy
