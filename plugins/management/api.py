"""The HTTP JSON API (RabbitMQ's paths and field names where the concept exists), the
console's static files and ``/metrics``, as plain twisted.web resources on the broker's reactor.

twisted.web unquotes each path segment after splitting on ``/``, so the default vhost written
``%2F`` arrives as one segment ``"/"``. Every handler runs on the reactor thread and only reads
or changes broker state in memory; nothing here is on a message's path.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET, Request

from polymq.core.auth import Identity
from polymq.core.errors import BrokerError
from polymq.core.message import Message

from . import definitions
from .openapi import openapi_document
from .queues_api import GET_MAX, QueueHandlers
from .state import State
from .web import (
    MAX_BODY,
    MAX_PAGE_SIZE,
    ApiError,
    LimitedRequest,
    Metrics,
    Root,
    Router,
    arg_flag,
    authenticate,
    check_csrf,
    error_name,
    header_text,
    is_loopback,
    json_object,
    shape_list,
)

__all__ = [
    "GET_MAX",
    "MAX_BODY",
    "MAX_PAGE_SIZE",
    "ApiError",
    "LimitedRequest",
    "ManagementApi",
    "Metrics",
    "Root",
    "Router",
    "authenticate",
    "check_csrf",
    "is_loopback",
    "shape_list",
]

log = Logger(namespace="polymq.management")

_ERROR_STATUS = {403: 403, 404: 404, 405: 409, 406: 400, 503: 400, 530: 405}


class ManagementApi(QueueHandlers, resource.Resource):
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
                request, {"error": error_name(e.status), "reason": e.reason}, e.status
            )
        except BrokerError as e:
            status = _ERROR_STATUS.get(e.code, 400)
            return self._json(request, {"error": error_name(status), "reason": e.text}, status)
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
                    request, {"error": error_name(e.status), "reason": e.reason}, e.status
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
        reason = header_text(request, b"x-reason") or "closed via management"
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
            arguments=json_object(body, "arguments"),
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
        vh.delete_exchange(name, if_unused=arg_flag(request, "if-unused"))
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
        props = json_object(body, "properties")
        headers = json_object(props, "headers")
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
