"""The HTTP JSON API (RabbitMQ's paths and field names where the concept exists), the
console's static files and ``/metrics``, as plain twisted.web resources on the broker's reactor.

twisted.web unquotes each path segment after splitting on ``/``, so the default vhost written
``%2F`` arrives as one segment ``"/"``. Every handler runs on the reactor thread and only reads
or changes broker state in memory; nothing here is on a message's path.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import resource, static
from twisted.web.server import NOT_DONE_YET, Request

from polymq.core.auth import ANONYMOUS, Identity
from polymq.core.errors import BrokerError
from polymq.core.message import Message
from polymq.core.queue import Queue
from polymq.core.stream import Stream

from . import definitions
from .openapi import openapi_document
from .state import State, jsonable, properties_key

log = Logger(namespace="polymq.management")

MAX_BODY = 20 * 1024 * 1024  # request bodies above this get 400, as RabbitMQ does
GET_MAX = 1000  # messages one POST .../get may take

_ERROR_STATUS = {403: 403, 404: 404, 405: 409, 406: 400, 503: 400, 530: 405}


class ApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _bool(request: Request, name: str) -> bool:
    values = request.args.get(name.encode())
    return bool(values) and values[0].lower() in (b"true", b"1", b"yes")


def _arg(request: Request, name: str, default: str | None = None) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else default


def _header(request: Request, name: bytes) -> str | None:
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


class ManagementApi(resource.Resource):
    """``/api/...``: one leaf resource dispatching on the unquoted path segments."""

    isLeaf = True

    def __init__(self, broker: Any, state: State, section: dict) -> None:
        super().__init__()
        self.broker = broker
        self.state = state
        self.section = section
        self.router = Router()
        self._refusal_logged = 0.0
        self._routes()

    # -- plumbing ----------------------------------------------------------------------------

    def render(self, request: Request) -> bytes:
        method = request.method.decode()
        segments = [s.decode("utf-8", "replace") for s in request.postpath]
        if segments and segments[-1] == "":
            segments = segments[:-1]
        identity = authenticate(self.broker, request)
        if isinstance(identity, Deferred):
            # a password hash is being verified in a thread: answer when it is done
            def answer(found: Identity | None) -> None:
                if not request.finished and not getattr(request, "_disconnected", False):
                    request.write(self._render_as(request, found, method, segments))
                    request.finish()

            identity.addCallback(answer).addErrback(
                lambda f: log.failure("management: answering a request failed", f)
            )
            return NOT_DONE_YET
        return self._render_as(request, identity, method, segments)

    def _render_as(
        self, request: Request, identity: Identity | None, method: str, segments: list[str]
    ) -> bytes:
        try:
            if identity is None:
                self._log_refusal(request)
                return self._unauthorized(request)
            check_csrf(request)
            handler, captures, known = self.router.match(method, segments)
            if handler is None:
                raise ApiError(
                    405 if known else 404, "method not allowed" if known else "no such endpoint"
                )
            request.polymq_identity = identity
            result = handler(request, **captures)
        except ApiError as e:
            return self._json(
                request, {"error": _error_name(e.status), "reason": e.reason}, e.status
            )
        except BrokerError as e:
            status = _ERROR_STATUS.get(e.code, 400)
            return self._json(request, {"error": _error_name(status), "reason": e.text}, status)
        except Exception as e:
            log.failure(
                "management: {method} /api/{path} failed", method=method, path="/".join(segments)
            )
            return self._json(request, {"error": "internal_error", "reason": repr(e)}, 500)
        if result is None:
            request.setResponseCode(204)
            return b""
        if isinstance(result, tuple):
            body, status = result
            return self._json(request, body, status)
        if isinstance(result, list) and request.args:
            try:
                result = shape_list(request, result)
            except ApiError as e:
                return self._json(
                    request, {"error": _error_name(e.status), "reason": e.reason}, e.status
                )
        return self._json(request, result, 200)

    def _log_refusal(self, request: Request) -> None:
        # one line a second at most: a client retrying in a loop must not flood the log
        if request.getHeader(b"authorization") is None:
            return  # the console's first request, curl without -u: not worth a line
        now = self.broker.clock.seconds()
        if now - self._refusal_logged >= 1.0:
            self._refusal_logged = now
            peer = request.getClientAddress()
            log.warn("management: login refused for {peer}", peer=getattr(peer, "host", peer))

    def _json(self, request: Request, body: Any, status: int) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache")
        return json.dumps(body, separators=(",", ":")).encode()

    def _unauthorized(self, request: Request) -> bytes:
        # the console logs in with a form: no challenge, or the browser pops its own dialog
        if request.getHeader(b"x-polymq-console") is None:
            request.setHeader(b"www-authenticate", b'Basic realm="polymq management"')
        return self._json(request, {"error": "not_authorized", "reason": "Login failed"}, 401)

    def _body(self, request: Request) -> dict:
        if getattr(request, "too_large", False):
            raise ApiError(400, f"request body larger than {MAX_BODY} bytes")
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise ApiError(400, f"body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        return body

    @staticmethod
    def _exchange_name(name: str) -> str:
        return "" if name == "amq.default" else name  # the nameless exchange in URLs

    def _vhost(self, name: str):
        vh = self.broker.vhosts.get(name)
        if vh is None:
            raise ApiError(404, f"no vhost '{name}'")
        return vh

    # -- routes ------------------------------------------------------------------------------

    def _routes(self) -> None:
        r = self.router.add
        s = self.state
        r("GET", "", lambda req: {"api": "polymq management", "openapi": "/api/openapi.json"})
        r("GET", "openapi.json", lambda req: openapi_document())
        r("GET", "overview", lambda req: s.overview())
        r(
            "GET",
            "whoami",
            lambda req: {"name": req.polymq_identity.user, "tags": ["administrator"]},
        )
        r("GET", "nodes", lambda req: [self._node()])
        r("GET", "ha", lambda req: s.ha())
        r("GET", "vhosts", lambda req: [{"name": n} for n in sorted(self.broker.vhosts)])
        r("GET", "vhosts/{name}", lambda req, name: {"name": self._vhost(name).name})
        r("PUT", "vhosts/{name}", self._put_vhost)
        r("DELETE", "vhosts/{name}", self._delete_vhost)
        r("GET", "health/checks/alarms", self._alarms)
        r("GET", "limits", self._get_limits)
        r("PUT", "limits", self._put_limits)
        r("GET", "connections", lambda req: s.connections())
        r("GET", "connections/{name}", self._get_connection)
        r("DELETE", "connections/{name}", self._close_connection)
        r("GET", "channels", lambda req: s.channels())
        r("GET", "consumers", lambda req: s.consumers())
        r("GET", "consumers/{vhost}", lambda req, vhost: s.consumers(self._vhost(vhost).name))
        r("GET", "exchanges", lambda req: s.exchanges())
        r("GET", "exchanges/{vhost}", lambda req, vhost: s.exchanges(self._vhost(vhost).name))
        r("GET", "exchanges/{vhost}/{name}", self._get_exchange)
        r("PUT", "exchanges/{vhost}/{name}", self._put_exchange)
        r("DELETE", "exchanges/{vhost}/{name}", self._delete_exchange)
        r("POST", "exchanges/{vhost}/{name}/publish", self._publish)
        r("GET", "queues", lambda req: s.queues())
        r("GET", "queues/{vhost}", lambda req, vhost: s.queues(self._vhost(vhost).name))
        r("GET", "queues/{vhost}/{name}", self._get_queue)
        r("PUT", "queues/{vhost}/{name}", self._put_queue)
        r("DELETE", "queues/{vhost}/{name}", self._delete_queue)
        r("DELETE", "queues/{vhost}/{name}/contents", self._purge_queue)
        r("POST", "queues/{vhost}/{name}/get", self._get_messages)
        r("GET", "queues/{vhost}/{name}/bindings", self._queue_bindings)
        r("GET", "bindings", lambda req: s.bindings())
        r("GET", "bindings/{vhost}", lambda req, vhost: s.bindings(self._vhost(vhost).name))
        for kind in ("q", "e"):
            base = "bindings/{vhost}/e/{source}/" + kind + "/{dest}"
            r("GET", base, self._binding_handler(kind, "list"))
            r("POST", base, self._binding_handler(kind, "create"))
            r("GET", base + "/{props}", self._binding_handler(kind, "get"))
            r("DELETE", base + "/{props}", self._binding_handler(kind, "delete"))
        r("GET", "streams", lambda req: s.streams())
        r("GET", "streams/{vhost}", lambda req, vhost: s.streams(self._vhost(vhost).name))
        r("GET", "streams/{vhost}/{name}", self._get_stream)
        r("DELETE", "streams/{vhost}/{name}", self._delete_stream)
        r("GET", "groups", lambda req: s.groups())
        r("GET", "groups/{name}", self._get_group)
        r("GET", "mqtt/sessions", lambda req: s.mqtt_sessions())
        r("GET", "mqtt/retained", lambda req: s.mqtt_retained())
        r("GET", "definitions", lambda req: definitions.export(self.broker))
        r("POST", "definitions", self._import)

    # -- handlers ----------------------------------------------------------------------------

    def _node(self) -> dict:
        ov = self.state.overview()
        return {
            "name": ov["node"],
            "running": True,
            "uptime": ov["uptime"],
            "mem_used": ov["mem_used"],
            "mem_alarm": ov["mem_alarm"],
            "disk_free_alarm": ov["disk_free_alarm"],
            "ha_role": ov["ha_role"],
        }

    def _alarms(self, request: Request):
        reg = self.state.registry
        if reg.blocked:
            return {"status": "failed", "reason": reg.blocked_reason or "resource alarm"}, 503
        return {"status": "ok"}

    def _get_limits(self, request: Request) -> dict:
        alarm = self.broker.alarm
        return {
            "memory_high_watermark": alarm.memory_limit,
            "mem_used": alarm.memory_used,
            "mem_alarm": alarm.memory_alarm,
            "disk_free_limit": alarm.disk_free_limit,
            "disk_free": alarm.disk_free,
            "disk_free_alarm": alarm.disk_alarm,
        }

    def _put_limits(self, request: Request):
        body = self._body(request)
        unknown = sorted(set(body) - {"memory_high_watermark", "disk_free_limit"})
        if unknown or not body:
            raise ApiError(
                400,
                "give memory_high_watermark and/or disk_free_limit"
                + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
            )
        values = {}
        for key, value in body.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ApiError(400, f"{key} must be a non-negative number")
            values[key] = value
        if values.get("memory_high_watermark") == 0:
            raise ApiError(400, "memory_high_watermark must be above 0")
        log.info(
            "management: {user} sets limits {values}",
            user=request.polymq_identity.user,
            values=values,
        )
        self.broker.alarm.set_limits(**values)
        return self._get_limits(request)

    def _connection(self, name: str):
        info = self.state.find_connection(name)
        if info is None:
            raise ApiError(404, f"no connection '{name}'")
        return info

    def _get_connection(self, request: Request, name: str):
        info = self._connection(name)
        return next(c for c in self.state.connections() if c["id"] == info.id)

    def _close_connection(self, request: Request, name: str):
        info = self._connection(name)
        reason = _header(request, b"x-reason") or "closed via management"
        user = request.polymq_identity.user
        log.info(
            "management: {user} closes {conn}: {reason}", user=user, conn=info.name, reason=reason
        )
        info.close(reason)
        return None

    def _get_exchange(self, request: Request, vhost: str, name: str):
        name = self._exchange_name(name)
        ex = self._vhost(vhost).exchanges.get(name)
        if ex is None:
            raise ApiError(404, f"no exchange '{name}' in vhost '{vhost}'")
        return self.state.exchange(ex)

    def _put_exchange(self, request: Request, vhost: str, name: str):
        body = self._body(request)
        vh = self._vhost(vhost)
        existed = name in vh.exchanges
        vh.declare_exchange(
            name,
            str(body.get("type", "direct")),
            durable=bool(body.get("durable", True)),
            auto_delete=bool(body.get("auto_delete", False)),
            internal=bool(body.get("internal", False)),
            arguments=_object(body, "arguments"),
        )
        return None if existed else ({}, 201)

    def _put_vhost(self, request: Request, name: str):
        if not name or len(name) > 255:
            raise ApiError(400, "a vhost name is 1 to 255 characters")
        existed = name in self.broker.vhosts
        self.broker.add_vhost(name)
        return None if existed else ({}, 201)

    def _delete_vhost(self, request: Request, name: str):
        self._vhost(name)
        self.broker.delete_vhost(name)  # AccessRefused for the default vhost: 403
        return None

    def _delete_exchange(self, request: Request, vhost: str, name: str):
        vh = self._vhost(vhost)
        if name not in vh.exchanges:
            raise ApiError(404, f"no exchange '{name}' in vhost '{vhost}'")
        vh.delete_exchange(name, if_unused=_bool(request, "if-unused"))
        return None

    def _publish(self, request: Request, vhost: str, name: str):
        name = self._exchange_name(name)
        body = self._body(request)
        vh = self._vhost(vhost)
        if name not in vh.exchanges:
            raise ApiError(404, f"no exchange '{name}' in vhost '{vhost}'")
        encoding = body.get("payload_encoding", "string")
        payload = body.get("payload", "")
        if not isinstance(payload, str):
            raise ApiError(400, "payload must be a string")
        if encoding == "base64":
            try:
                data = base64.b64decode(payload, validate=True)
            except ValueError:
                raise ApiError(400, "payload is not base64") from None
        elif encoding == "string":
            data = payload.encode()
        else:
            raise ApiError(400, "payload_encoding must be string or base64")
        props = _object(body, "properties")
        headers = _object(props, "headers")
        strings = {}
        for key in ("content_type", "message_id", "correlation_id", "reply_to", "type"):
            value = props.get(key)
            if value is not None and not isinstance(value, str):
                raise ApiError(400, f"properties.{key} must be a string")
            strings[key] = value
        priority = props.get("priority")
        if priority is not None and (type(priority) is not int or not 0 <= priority <= 255):
            raise ApiError(400, "properties.priority must be an integer 0-255")
        mode = props.get("delivery_mode", 1)
        if mode not in (1, 2):
            raise ApiError(400, "properties.delivery_mode must be 1 or 2")
        routing_key = body.get("routing_key", "")
        if not isinstance(routing_key, str):
            raise ApiError(400, "routing_key must be a string")
        msg = Message(data, headers=headers, priority=priority, durable=mode == 2, **strings)
        routed, _refused = vh.publish(name, routing_key, msg)
        return {"routed": routed > 0}

    def _queue_obj(self, vhost: str, name: str):
        q = self._vhost(vhost).queues.get(name)
        if q is None:
            raise ApiError(404, f"no queue '{name}' in vhost '{vhost}'")
        return q

    def _get_queue(self, request: Request, vhost: str, name: str):
        return self.state.queue(self._queue_obj(vhost, name))

    def _put_queue(self, request: Request, vhost: str, name: str):
        body = self._body(request)
        definitions.check_partitions(_object(body, "arguments"))
        vh = self._vhost(vhost)
        existed = name in vh.queues
        vh.declare_queue(
            name,
            durable=bool(body.get("durable", True)),
            auto_delete=bool(body.get("auto_delete", False)),
            arguments=_object(body, "arguments"),
        )
        return None if existed else ({}, 201)

    def _delete_queue(self, request: Request, vhost: str, name: str):
        self._queue_obj(vhost, name)
        self._vhost(vhost).delete_queue(
            name, if_unused=_bool(request, "if-unused"), if_empty=_bool(request, "if-empty")
        )
        return None

    def _purge_queue(self, request: Request, vhost: str, name: str):
        q = self._queue_obj(vhost, name)
        if not isinstance(q, Queue):
            raise ApiError(400, f"'{name}' is a stream: streams are trimmed by retention")
        q.purge()
        return None

    def _get_messages(self, request: Request, vhost: str, name: str):
        body = self._body(request)
        q = self._queue_obj(vhost, name)
        if not isinstance(q, Queue):
            raise ApiError(400, f"'{name}' is a stream: read it by offset")
        count = body.get("count", 1)
        if not isinstance(count, int) or not 0 < count <= GET_MAX:
            raise ApiError(400, f"count must be 1-{GET_MAX}")
        ackmode = body.get("ackmode", "ack_requeue_true")
        if ackmode not in (
            "ack_requeue_true",
            "reject_requeue_true",
            "ack_requeue_false",
            "reject_requeue_false",
        ):
            raise ApiError(400, f"unknown ackmode {ackmode!r}")
        encoding = body.get("encoding", "auto")
        truncate = body.get("truncate")
        if truncate is not None and (type(truncate) is not int or truncate < 0):
            raise ApiError(400, "truncate must be a non-negative integer")
        taken = []
        for _ in range(count):
            d = q.get(no_ack=False)
            if d is None:
                break
            taken.append(d)
        out = []
        before = q.message_count + len(taken)  # ready messages before this get
        for d in taken:
            m = d.message
            data = m.body if truncate is None else m.body[:truncate]
            if encoding == "base64":
                payload, enc = base64.b64encode(data).decode(), "base64"
            else:
                try:
                    payload, enc = data.decode("utf-8"), "string"
                except UnicodeDecodeError:
                    payload, enc = base64.b64encode(data).decode(), "base64"
            out.append(
                {
                    "payload": payload,
                    "payload_bytes": len(m.body),
                    "payload_encoding": enc,
                    "redelivered": d.redelivered,
                    "exchange": m.exchange or "",
                    "routing_key": m.routing_key or "",
                    "message_count": before - 1 - len(out),  # left after this one, as basic.get
                    "properties": jsonable(
                        {
                            k: v
                            for k, v in (
                                ("headers", m.headers),
                                ("content_type", m.content_type),
                                ("message_id", m.message_id),
                                ("correlation_id", m.correlation_id),
                                ("priority", m.priority),
                                ("timestamp", m.timestamp),
                            )
                            if v
                        }
                    ),
                }
            )
        if ackmode.endswith("requeue_true"):
            q.requeue(taken, count=False)
        else:
            for d in taken:
                q.ack(d) if ackmode.startswith("ack") else q.nack(d, requeue=False)
        return out

    def _queue_bindings(self, request: Request, vhost: str, name: str):
        self._queue_obj(vhost, name)
        return [
            b
            for b in self.state.bindings(vhost)
            if b["destination"] == name and b["destination_type"] == "queue"
        ]

    def _binding_handler(self, kind: str, action: str) -> Handler:
        dest_type = "queue" if kind == "q" else "exchange"

        def handler(request: Request, vhost: str, source: str, dest: str, props: str = ""):
            vh = self._vhost(vhost)
            if source not in vh.exchanges:
                raise ApiError(404, f"no exchange '{source}' in vhost '{vhost}'")
            if dest_type == "queue" and dest not in vh.queues:
                raise ApiError(404, f"no queue '{dest}' in vhost '{vhost}'")
            if dest_type == "exchange" and dest not in vh.exchanges:
                raise ApiError(404, f"no exchange '{dest}' in vhost '{vhost}'")
            found = [
                b
                for b in self.state.bindings(vhost)
                if b["source"] == source
                and b["destination"] == dest
                and b["destination_type"] == dest_type
            ]
            if action == "list":
                return found
            if action == "create":
                body = self._body(request)
                key = body.get("routing_key", "")
                if not isinstance(key, str):
                    raise ApiError(400, "routing_key must be a string")
                args = _object(body, "arguments")
                if dest_type == "queue":
                    vh.bind_queue(dest, source, key, args)
                else:
                    vh.bind_exchange(dest, source, key, args)
                pk = properties_key(key, args)
                request.setHeader(
                    b"location",
                    "/api/bindings/{}/e/{}/{}/{}/{}".format(
                        *(quote(x, safe="") for x in (vhost, source, kind, dest, pk))
                    ).encode(),
                )
                return {}, 201
            match = [b for b in found if b["properties_key"] == props]
            if not match:
                raise ApiError(404, "no such binding")
            if action == "get":
                return match[0]
            b = match[0]
            args = _binding_args(vh, source, dest, dest_type, b["routing_key"], props)
            if dest_type == "queue":
                vh.unbind_queue(dest, source, b["routing_key"], args)
            else:
                vh.unbind_exchange(dest, source, b["routing_key"], args)
            return None

        return handler

    def _get_stream(self, request: Request, vhost: str, name: str):
        q = self._queue_obj(vhost, name)
        if not isinstance(q, Stream):
            raise ApiError(404, f"'{name}' is a queue, not a stream")
        return self.state.stream(q)

    def _delete_stream(self, request: Request, vhost: str, name: str):
        q = self._queue_obj(vhost, name)
        if not isinstance(q, Stream):
            raise ApiError(404, f"'{name}' is a queue, not a stream")
        self._vhost(vhost).delete_queue(name)
        return None

    def _get_group(self, request: Request, name: str):
        for g in self.state.groups():
            if g["group"] == name:
                return g
        raise ApiError(404, f"no consumer group '{name}'")

    def _import(self, request: Request):
        body = self._body(request)
        counts = definitions.import_(self.broker, body)
        log.info(
            "management: definitions imported by {user}: {counts}",
            user=request.polymq_identity.user,
            counts=counts,
        )
        return counts, 201


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
    name = _arg(request, "name")
    if name:
        if _bool(request, "use_regex"):
            try:
                pattern = re.compile(name)
            except re.error as e:
                raise ApiError(400, f"name is not a regular expression: {e}") from None
            items = [i for i in items if pattern.search(str(_dotted(i, "name") or ""))]
        else:
            items = [i for i in items if name in str(_dotted(i, "name") or "")]
    sort = _arg(request, "sort")
    if sort:
        items = sorted(
            items, key=lambda i: _sort_key(_dotted(i, sort)), reverse=_bool(request, "sort_reverse")
        )
    columns = _arg(request, "columns")
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
    if _arg(request, "page") is None:
        return items
    try:
        page = int(_arg(request, "page") or "1")
        size = int(_arg(request, "page_size") or "100")
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


def _object(body: dict, key: str) -> dict:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{key} must be a JSON object")
    return value


def _binding_args(vh, source: str, dest: str, dest_type: str, key: str, props: str) -> dict:
    ex = vh.exchanges[source]
    for b in ex.bindings.values():
        if (
            b.destination.name == dest
            and b.destination.kind == dest_type
            and b.key == key
            and properties_key(b.key, jsonable(b.arguments)) == props
        ):
            return b.arguments
    return {}


def _error_name(status: int) -> str:
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
    header = _header(request, b"authorization")
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
    origin = _header(request, b"origin")
    if origin is None:  # not a browser (curl, polymq ctl): nothing to forge
        return
    host = _header(request, b"host") or ""
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
