"""The AMQP bus for processes that are not nameko services (edgelink, the CLI, benchmarks).

Events follow nameko's convention so nameko `@event_handler`s receive them unchanged: a
durable topic exchange `<service>.events`, the event type as routing key, a JSON body.
Publishing waits for the broker's confirm and is mandatory, so an event nobody has a queue
for is an error here, not a silent loss.
"""
from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

from kombu import Connection, Exchange, Queue
from kombu.mixins import ConsumerMixin


class Undeliverable(Exception):
    """The broker did not confirm the event, or no queue was bound to receive it."""


def event_exchange(service: str) -> Exchange:
    # Same declaration as nameko.events.get_event_exchange, so both sides agree.
    return Exchange(f"{service}.events", type="topic", durable=True, auto_delete=False, delivery_mode=2)


def event_payload(site_id: str, **fields) -> dict:
    """A versioned event payload with the fields every event carries."""
    return {"v": 1, "event_id": str(uuid.uuid4()), "occurred_at": datetime.now(UTC).isoformat(),
            "site_id": site_id, **fields}


class ConfirmedPublisher:
    """Publishes one service's events with publisher confirms; safe to share between threads."""

    def __init__(self, amqp_uri: str, service: str, connect_timeout: float = 5.0):
        self.amqp_uri = amqp_uri
        self.exchange = event_exchange(service)
        self._lock = threading.Lock()
        self._connect_timeout = connect_timeout
        self._conn: Connection | None = None
        self._producer = None

    def _ensure(self):
        if self._conn is None or not self._conn.connected:
            self.close()
            conn = Connection(self.amqp_uri, transport_options={"confirm_publish": True},
                              connect_timeout=self._connect_timeout, heartbeat=0)
            conn.ensure_connection(max_retries=1)
            self._conn = conn
            self._producer = conn.Producer(serializer="json")
            self.exchange(self._producer.channel).declare()
        return self._producer

    def publish(self, event_type: str, payload: dict, headers: dict | None = None) -> None:
        """Returns once the broker has confirmed the event is routed and stored; raises otherwise."""
        with self._lock:
            try:
                producer = self._ensure()
                producer.publish(payload, exchange=self.exchange, routing_key=event_type,
                                 delivery_mode=2, mandatory=True, retry=False, headers=headers or {})
            except Exception as exc:  # any failure: the caller retries the whole batch later
                self.close()
                if "NO_ROUTE" in str(exc):
                    raise Undeliverable(f"no queue is bound for {self.exchange.name}/{event_type}") from exc
                raise Undeliverable(f"broker did not confirm {event_type}: {exc}") from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:
                pass
        self._conn = None
        self._producer = None


class EventConsumer(ConsumerMixin):
    """Consumes events from other services on a durable queue of our own; reconnects by itself.

    `bindings` is a list of (service, event_type); `handle(event_type, payload)` runs for each
    message and the message is acknowledged only after it returns.
    """

    def __init__(self, amqp_uri: str, queue_name: str, bindings, handle, prefetch: int = 50):
        self.connection = Connection(amqp_uri, heartbeat=20)
        self.queue = Queue(queue_name, durable=True, auto_delete=False,
                           bindings=[_binding(s, t) for s, t in bindings])
        self.handle = handle
        self.prefetch = prefetch
        self.ready = threading.Event()

    def get_consumers(self, Consumer, channel):
        consumer = Consumer(queues=[self.queue], callbacks=[self._on_message], accept=["json"])
        consumer.qos(prefetch_count=self.prefetch)
        return [consumer]

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        self.ready.set()

    def on_connection_error(self, exc, interval):
        self.ready.clear()
        super().on_connection_error(exc, interval)

    def _on_message(self, body, message):
        self.handle(message.delivery_info.get("routing_key"), body)
        message.ack()

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"consume-{self.queue.name}", daemon=True)
        thread.start()
        return thread


def _binding(service: str, event_type: str):
    from kombu import binding
    return binding(event_exchange(service), routing_key=event_type)
