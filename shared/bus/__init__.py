"""The event bus: one interface, an in-memory backend and a NATS JetStream backend."""

from shared.bus.base import EventBus, Handler, Subscription, bus_from_url

__all__ = ["EventBus", "Handler", "Subscription", "bus_from_url"]
