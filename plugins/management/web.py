"""The HTTP side of the management API, below its handlers: errors, request arguments, the
router, RabbitMQ's list options (:func:`shape_list`), HTTP Basic login and the CSRF check, the
size-limited request, and the ``/metrics`` and ``/`` resources.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import re
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.web import resource, static
from twisted.web.server import Request

from polymq.core.auth import ANONYMOUS, Identity

if TYPE_CHECKING:
    from .api import ManagementApi

MAX_BODY = 20 * 1024 * 1024  # request bodies above this get 400, as RabbitMQ does


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def arg_flag(request: Request, name: str) -> bool:
    values = request.args.get(name.encode())
    return bool(values) and values[0].lower() in (b"true", b"1", b"yes")


def arg_text(request: Request, name: str, default: str | None = None) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else default


def header_text(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


Handler = Callable[..., Any]


class Router:
    """(method, path pattern) -> handler; ``{name}`` captures one (unquoted) segment."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, list[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, [p for p in pattern.strip("/").split("/") if p], handler))

    def match(self, method: str, segments: list[str]) -> tuple[Handler | None, dict, bool]:
        """(handler, captures, path_known); path_known without handler means 405."""
        path_known = False
        for m, pattern, handler in self.routes:
            if len(pattern) != len(segments):
                continue
            captures = {}
            for p, s in zip(pattern, segments, strict=True):
                if p.startswith("{"):
                    captures[p[1:-1]] = s
                elif p != s:
                    break
            else:
                path_known = True
                if m == method:
                    return handler, captures, True
        return None, {}, path_known


MAX_PAGE_SIZE = 500


def _dotted(item: Any, path: str) -> Any:
    for part in path.split("."):
        item = item.get(part) if isinstance(item, dict) else None
    return item


def shape_list(request: Request, items: list) -> Any:
    """RabbitMQ's list options: ``name`` (substring, or a regex with ``use_regex=true``),
    ``sort`` / ``sort_reverse`` (a dotted field), ``columns=a,b.c``, and ``page`` /
    ``page_size`` (at most 500), which wrap the answer in a page object."""
    total = len(items)
    name = arg_text(request, "name")
    if name:
        if arg_flag(request, "use_regex"):
            try:
                pattern = re.compile(name)
            except re.error as e:
                raise ApiError(400, f"name is not a regular expression: {e}") from None
            items = [i for i in items if pattern.search(str(_dotted(i, "name") or ""))]
        else:
            items = [i for i in items if name in str(_dotted(i, "name") or "")]
    sort = arg_text(request, "sort")
    if sort:
        items = sorted(
            items,
            key=lambda i: _sort_key(_dotted(i, sort)),
            reverse=arg_flag(request, "sort_reverse"),
        )
    columns = arg_text(request, "columns")
    if columns:
        wanted = [c for c in columns.split(",") if c]
        shaped = []
        for i in items:
            out: dict = {}
            for c in wanted:
                value = _dotted(i, c)
                node = out
                parts = c.split(".")
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = value
            shaped.append(out)
        items = shaped
    if arg_text(request, "page") is None:
        return items
    try:
        page = int(arg_text(request, "page") or "1")
        size = int(arg_text(request, "page_size") or "100")
    except ValueError:
        raise ApiError(400, "page and page_size must be integers") from None
    if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
        raise ApiError(400, f"page must be >= 1 and page_size 1-{MAX_PAGE_SIZE}")
    page_items = items[(page - 1) * size : page * size]
    return {
        "items": page_items,
        "page": page,
        "page_size": size,
        "page_count": max(1, -(-len(items) // size)),
        "total_count": total,
        "filtered_count": len(items),
        "item_count": len(page_items),
    }


def _sort_key(value: Any) -> tuple:
    """Numbers before strings before missing values, each in their own order."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value, "")
    if value is None:
        return (2, 0, "")
    return (1, 0, str(value))


def json_object(body: dict, key: str) -> dict:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{key} must be a JSON object")
    return value


def error_name(status: int) -> str:
    return {
        400: "bad_request",
        401: "not_authorized",
        403: "access_refused",
        404: "not_found",
        405: "method_not_allowed",
        409: "resource_locked",
        503: "unavailable",
    }.get(status, "error")


def authenticate(broker: Any, request: Request) -> Identity | None | Deferred:
    """HTTP Basic against the broker's users; guest only from loopback (like RabbitMQ). A
    Deferred of the answer when a password hash has to be verified (in a thread)."""
    header = header_text(request, b"authorization")
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    if not user:
        return None
    peer = request.getClientAddress()
    if user == "guest" and not is_loopback(getattr(peer, "host", None)):
        return None
    result = broker.authenticate("management", user, password, peer)
    if isinstance(result, Deferred):
        return result.addCallback(_management_identity)
    return _management_identity(result)


def _management_identity(result: Any) -> Identity | None:
    if isinstance(result, Identity) and result.user != ANONYMOUS:
        return result
    return None


def check_csrf(request: Request) -> None:
    """A browser remembers Basic credentials: a state-changing request from another origin
    (a form on some other site) is refused."""
    if request.method in (b"GET", b"HEAD"):
        return
    origin = header_text(request, b"origin")
    if origin is None:  # not a browser (curl, polymq ctl): nothing to forge
        return
    host = header_text(request, b"host") or ""
    if re.sub(r"^https?://", "", origin) != host:
        raise ApiError(403, "cross-origin request refused")


class LimitedRequest(Request):
    """Keeps a request body in memory up to :data:`MAX_BODY` and drops the rest: no temporary
    file on the reactor thread, no unbounded buffering; the handler answers 400."""

    too_large = False

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        if length is not None and length > MAX_BODY:
            self.too_large = True

    def handleContentChunk(self, data: bytes) -> None:
        if self.too_large:
            return
        if self.content.tell() + len(data) > MAX_BODY:
            self.too_large = True
            self.content = io.BytesIO()
            return
        self.content.write(data)


class Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, broker: Any, render_metrics: Callable[[Request], bytes]) -> None:
        super().__init__()
        self.broker = broker
        self.render_metrics = render_metrics

    def render_GET(self, request: Request) -> bytes:
        return self.render_metrics(request)


class Root(resource.Resource):
    """``/``: the console (static files), ``/api`` and ``/metrics``."""

    def __init__(self, api: ManagementApi, metrics: Metrics) -> None:
        super().__init__()
        static_dir = resources.files("polymq.plugins.management") / "static"
        self.files = static.File(str(static_dir))
        self.files.indexNames = ["index.html"]
        self.putChild(b"api", api)
        self.putChild(b"metrics", metrics)

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        request.setHeader(
            b"content-security-policy",
            b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        request.setHeader(b"x-content-type-options", b"nosniff")
        return self.files.getChild(path or b"index.html", request)
