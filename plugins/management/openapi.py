"""The OpenAPI 3.1 document of the management API, served at ``/api/openapi.json``."""

from __future__ import annotations

import re
from typing import Any

from polymq.core.cli import version

_OBJ = {"type": "object"}
_LIST = {"type": "array", "items": {"type": "object"}}

# path, method, summary, response schema (None: 204), request body
ENDPOINTS: list[tuple[str, str, str, dict | None, bool]] = [
    (
        "/api/overview",
        "get",
        "Version, uptime, totals, rates, alarms and recent samples",
        _OBJ,
        False,
    ),
    ("/api/whoami", "get", "The authenticated user", _OBJ, False),
    ("/api/nodes", "get", "This node", _LIST, False),
    ("/api/ha", "get", "High availability: role, node id, epoch and since when", _OBJ, False),
    ("/api/vhosts", "get", "Virtual hosts", _LIST, False),
    ("/api/vhosts/{name}", "get", "One virtual host", _OBJ, False),
    ("/api/vhosts/{name}", "put", "Create a virtual host", None, False),
    (
        "/api/vhosts/{name}",
        "delete",
        "Delete a virtual host: its connections are closed, its queues and exchanges deleted",
        None,
        False,
    ),
    ("/api/health/checks/alarms", "get", "200 without a resource alarm, 503 with one", _OBJ, False),
    ("/api/limits", "get", "Thresholds of the resource alarm, and usage", _OBJ, False),
    (
        "/api/limits",
        "put",
        "Change memory_high_watermark (fraction or bytes) and/or disk_free_limit (bytes)",
        _OBJ,
        True,
    ),
    ("/api/connections", "get", "Connections of every protocol", _LIST, False),
    ("/api/connections/{name}", "get", "One connection (by name or id)", _OBJ, False),
    ("/api/connections/{name}", "delete", "Close a connection (header X-Reason)", None, False),
    ("/api/channels", "get", "Channels / sessions where the protocol has them", _LIST, False),
    ("/api/consumers", "get", "Consumers with credit and unacknowledged counts", _LIST, False),
    ("/api/consumers/{vhost}", "get", "Consumers of one vhost", _LIST, False),
    ("/api/exchanges", "get", "Exchanges", _LIST, False),
    ("/api/exchanges/{vhost}", "get", "Exchanges of one vhost", _LIST, False),
    ("/api/exchanges/{vhost}/{name}", "get", "One exchange", _OBJ, False),
    ("/api/exchanges/{vhost}/{name}", "put", "Declare an exchange", None, True),
    (
        "/api/exchanges/{vhost}/{name}",
        "delete",
        "Delete an exchange (?if-unused=true)",
        None,
        False,
    ),
    (
        "/api/exchanges/{vhost}/{name}/publish",
        "post",
        "Publish a message; answers {routed}",
        _OBJ,
        True,
    ),
    ("/api/queues", "get", "Queues and streams with depths and rates", _LIST, False),
    ("/api/queues/{vhost}", "get", "Queues of one vhost", _LIST, False),
    ("/api/queues/{vhost}/{name}", "get", "One queue", _OBJ, False),
    (
        "/api/queues/{vhost}/{name}",
        "put",
        "Declare a queue (arguments x-queue-type ...)",
        None,
        True,
    ),
    ("/api/queues/{vhost}/{name}", "delete", "Delete (?if-empty=true&if-unused=true)", None, False),
    ("/api/queues/{vhost}/{name}/contents", "delete", "Purge the ready messages", None, False),
    (
        "/api/queues/{vhost}/{name}/get",
        "post",
        "Get messages {count, ackmode, encoding}",
        _LIST,
        True,
    ),
    ("/api/queues/{vhost}/{name}/bindings", "get", "Bindings to a queue", _LIST, False),
    ("/api/bindings", "get", "Bindings", _LIST, False),
    ("/api/bindings/{vhost}", "get", "Bindings of one vhost", _LIST, False),
    (
        "/api/bindings/{vhost}/e/{source}/q/{dest}",
        "get",
        "Bindings exchange -> queue",
        _LIST,
        False,
    ),
    (
        "/api/bindings/{vhost}/e/{source}/q/{dest}",
        "post",
        "Bind {routing_key, arguments}; Location names the binding",
        _OBJ,
        True,
    ),
    ("/api/bindings/{vhost}/e/{source}/q/{dest}/{props}", "get", "One binding", _OBJ, False),
    ("/api/bindings/{vhost}/e/{source}/q/{dest}/{props}", "delete", "Unbind", None, False),
    (
        "/api/bindings/{vhost}/e/{source}/e/{dest}",
        "get",
        "Bindings exchange -> exchange",
        _LIST,
        False,
    ),
    ("/api/bindings/{vhost}/e/{source}/e/{dest}", "post", "Bind two exchanges", _OBJ, True),
    ("/api/bindings/{vhost}/e/{source}/e/{dest}/{props}", "get", "One binding", _OBJ, False),
    ("/api/bindings/{vhost}/e/{source}/e/{dest}/{props}", "delete", "Unbind", None, False),
    (
        "/api/streams",
        "get",
        "Streams (Kafka topics): partitions, offsets, sizes, groups",
        _LIST,
        False,
    ),
    ("/api/streams/{vhost}", "get", "Streams of one vhost", _LIST, False),
    ("/api/streams/{vhost}/{name}", "get", "One stream", _OBJ, False),
    ("/api/streams/{vhost}/{name}", "delete", "Delete a stream (Kafka topic)", None, False),
    (
        "/api/groups",
        "get",
        "Kafka consumer groups: offsets, log-end offsets, lag, members",
        _LIST,
        False,
    ),
    ("/api/groups/{name}", "get", "One consumer group", _OBJ, False),
    ("/api/mqtt/sessions", "get", "MQTT sessions (connected and persistent)", _LIST, False),
    ("/api/mqtt/retained", "get", "MQTT retained messages", _LIST, False),
    ("/api/definitions", "get", "Export vhosts, exchanges, queues, streams, bindings", _OBJ, False),
    ("/api/definitions", "post", "Import definitions (merge)", _OBJ, True),
    ("/api/openapi.json", "get", "This document", _OBJ, False),
]

_LIST_OPTIONS = [
    {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": text}
    for name, kind, text in (
        ("name", "string", "keep items whose name contains this (a regex with use_regex)"),
        ("use_regex", "boolean", "name is a regular expression"),
        ("sort", "string", "sort by this field (dotted for nested fields)"),
        ("sort_reverse", "boolean", "sort descending"),
        ("columns", "string", "comma-separated fields to keep"),
        ("page", "integer", "answer one page: {items, page, page_count, ...}"),
        ("page_size", "integer", "items per page, at most 500 (default 100)"),
    )
]

_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
            }
        }
    },
}


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict] = {}
    for path, method, summary, schema, has_body in ENDPOINTS:
        params = [
            {
                "name": p,
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
                "description": "percent-encoded; the default vhost is %2F" if p == "vhost" else p,
            }
            for p in re.findall(r"{(\w+)}", path)
        ]
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
            "responses": {"401": _ERROR, "404": _ERROR},
        }
        if method == "get" and schema is _LIST:
            params = params + _LIST_OPTIONS
        if params:
            op["parameters"] = params
        if schema is None:
            op["responses"]["204"] = {"description": "done"}
        else:
            # a PUT to a named resource creates it; a PUT to a singleton (no name) replaces it
            creates = method == "post" or (method == "put" and "{" in path)
            code = "201" if creates and schema is _OBJ and has_body else "200"
            op["responses"][code] = {
                "description": "ok",
                "content": {"application/json": {"schema": schema}},
            }
            if method == "put" and creates:
                op["responses"]["204"] = {"description": "existed already"}
        if has_body:
            op["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        paths.setdefault(path, {})[method] = op
    for path, summary in (
        ("/metrics", "Prometheus metrics, queue figures summed (text format)"),
        ("/metrics/per-object", "Prometheus metrics with one series per queue"),
    ):
        paths[path] = {
            "get": {
                "summary": summary,
                "operationId": "get" + path.replace("/", "_").replace("-", "_"),
                "security": [],
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "polymq management API",
            "version": version(),
            "description": "One view of AMQP, MQTT, Kafka and OpenWire clients and of the "
            "exchanges, queues and streams they share.",
        },
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
        "security": [{"basic": []}],
        "paths": paths,
    }
