"""Message texts: one Jinja2 file per event type and language, templates/<lang>/<event_type>.txt,
with a `subject` and a `body` block. StrictUndefined: a variable the event does not carry is an
error for that message (TemplateProblem), never an empty gap in what a resident reads.

Filters: `money` (fen -> "123.45"), `local` (an ISO time -> "2026-11-27 10:00" in the
recipient's time zone, the site's).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import jinja2

from services.notify import rules

DIR = Path(__file__).resolve().parent / "templates"


class TemplateProblem(ValueError):
    pass


def _money(fen) -> str:
    if isinstance(fen, jinja2.Undefined):
        fen._fail_with_undefined_error()
    return rules.yuan(fen)


@jinja2.pass_context
def _local(ctx, value) -> str:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if at.tzinfo is None:
        return at.strftime("%Y-%m-%d %H:%M")
    return at.astimezone(rules.zone(ctx.get("tz") or "Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")


def environment(directory: Path = DIR) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(directory)), undefined=jinja2.StrictUndefined,
                             autoescape=False, keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = _money
    env.filters["local"] = _local
    return env


_ENV = environment()


def render(event_type: str, language: str, context: dict, env: jinja2.Environment | None = None) -> tuple[str, str]:
    """(subject, body) for an event in a language; TemplateProblem says what is wrong."""
    env = env or _ENV
    name = f"{language}/{event_type}.txt"
    try:
        template = env.get_template(name)
        ctx = template.new_context(dict(context))
        subject = "".join(template.blocks["subject"](ctx)).strip()
        ctx = template.new_context(dict(context))
        body = "".join(template.blocks["body"](ctx)).strip() + "\n"
    except jinja2.TemplateNotFound:
        raise TemplateProblem(f"no template {name}") from None
    except KeyError as exc:
        raise TemplateProblem(f"template {name} has no {exc.args[0]} block") from None
    except jinja2.UndefinedError as exc:
        raise TemplateProblem(f"template {name}: {exc.message}") from None
    except (jinja2.TemplateError, ValueError, TypeError) as exc:
        raise TemplateProblem(f"template {name}: {exc}") from None
    return " ".join(subject.split())[:300], body


def known(event_type: str) -> bool:
    return all((DIR / lang / f"{event_type}.txt").exists() for lang in rules.LANGUAGES)
