"""Request parsing shared by the plain grpcio servers (edgelink, patrol's handheld API).

grpc answers INTERNAL when a request does not deserialize; with these parsers a handler sees a
`Malformed` instead and answers INVALID_ARGUMENT with the reason.
"""
from __future__ import annotations

from google.protobuf.message import DecodeError


class Malformed:
    """A request that did not deserialize; `error` says why."""

    def __init__(self, error: str):
        self.error = error


def parser(message_cls):
    """A request deserializer for grpc's method handlers that never raises."""
    def parse(data: bytes):
        try:
            return message_cls.FromString(data)
        except (DecodeError, ValueError) as exc:
            return Malformed(f"malformed {message_cls.__name__}: {exc}")
    return parse
