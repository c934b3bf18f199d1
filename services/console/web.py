"""The console's HTTP plumbing: JSON answers, request checks, and errors mapped to status codes."""
from __future__ import annotations

import json

import eventlet
from nameko.exceptions import RemoteError
from werkzeug.wrappers import Response

RPC_TIMEOUT_S = 5


class BadRequest(ValueError):
    pass


class Conflict(ValueError):
    pass


def json_response(body, status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json")


def error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _int_arg(request, name, default=None, low=None, high=None):
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {raw!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise BadRequest(f"{name} must be from {low} to {high}, got {value}")
    return value


def _bool_arg(request, name) -> bool:
    return request.args.get(name, "").lower() in ("1", "true", "yes")


def body(request, required=(), optional=()) -> dict:
    """The JSON object of a request with exactly the allowed fields; BadRequest names what is wrong."""
    try:
        data = json.loads(request.get_data(as_text=True) or "{}")
    except ValueError as exc:
        raise BadRequest(f"the body must be JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    missing = [f for f in required if data.get(f) in (None, "")]
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join((*required, *optional))}")
    return data


def remote_error_response(exc: RemoteError) -> Response:
    if exc.exc_type == "NotFound":
        return error(404, exc.value)
    if exc.exc_type == "InvalidInput":
        return error(400, exc.value)
    return error(502, f"{exc.exc_type}: {exc.value}")


def answer(call, status: int = 200, timeout: float = RPC_TIMEOUT_S, service: str = "access") -> Response:
    """Run `call()` (request parsing and RPC) and turn every failure into its JSON error."""
    try:
        with eventlet.Timeout(timeout):
            return json_response(call(), status)
    except BadRequest as exc:
        return error(400, str(exc))
    except Conflict as exc:
        return error(409, str(exc))
    except RemoteError as exc:
        return remote_error_response(exc)
    except eventlet.Timeout:
        return error(504, f"the {service} service did not answer within {timeout} s")
