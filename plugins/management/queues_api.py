"""The management API's handlers of queues, their messages and bindings, and streams."""

from __future__ import annotations

import base64
from urllib.parse import quote

from twisted.web.server import Request

from polymq.core.queue import Queue
from polymq.core.stream import Stream

from . import definitions
from .state import jsonable, properties_key
from .web import ApiError, Handler, arg_flag, json_object

GET_MAX = 1000  # messages one POST .../get may take


class QueueHandlers:
    """The queue, binding and stream handlers of :class:`~.api.ManagementApi` (a mixin: it
    supplies ``state``, ``_vhost`` and ``_body``)."""

    def _queue_obj(self, vhost: str, name: str):
        q = self._vhost(vhost).queues.get(name)
        if q is None:
            raise ApiError(404, f"no queue '{name}' in vhost '{vhost}'")
        return q

    def _get_queue(self, request: Request, vhost: str, name: str):
        return self.state.queue(self._queue_obj(vhost, name))

    def _put_queue(self, request: Request, vhost: str, name: str):
        body = self._body(request)
        definitions.check_partitions(json_object(body, "arguments"))
        vh = self._vhost(vhost)
        existed = name in vh.queues
        vh.declare_queue(
            name,
            durable=bool(body.get("durable", True)),
            auto_delete=bool(body.get("auto_delete", False)),
            arguments=json_object(body, "arguments"),
        )
        return None if existed else ({}, 201)

    def _delete_queue(self, request: Request, vhost: str, name: str):
        self._queue_obj(vhost, name)
        self._vhost(vhost).delete_queue(
            name, if_unused=arg_flag(request, "if-unused"), if_empty=arg_flag(request, "if-empty")
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
                args = json_object(body, "arguments")
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
