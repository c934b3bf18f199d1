"""Local stand-ins for the outside world, for `make run`, the tests and the bench:

- a real SMTP server (aiosmtpd) that keeps every mail it accepts, in memory and optionally in
  a Maildir folder (var/mail: open it with any mail reader, or `gatehouse notify mail`);
- a fake SMS provider (HTTP) that records each request and can be told to answer 500 or hang,
  and also receives webhooks, checking their HMAC signature when it knows the secret.

    python -m services.notify.devservers --smtp-port 2525 --sms-port 8025 --maildir var/mail

Control of the fake provider: POST /control {"mode": "ok" | "fail" | "hang", "hang_s": 10};
GET /requests lists what it received; POST /hooks/<name> receives a webhook (secrets via
--hook-secret NAME=SECRET).
"""
from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller

from services.notify.channels import verify


class MailStore:
    """The SMTP server's handler: keeps (envelope recipients, parsed mail) of each DATA."""

    def __init__(self, maildir: Path | None = None, keep: bool = True):
        self.lock = threading.Lock()
        self.mails: list[dict] = []
        self.count = 0
        self.keep = keep
        self.maildir = Path(maildir) if maildir else None
        if self.maildir is not None:
            for sub in ("tmp", "new", "cur"):
                (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        with self.lock:
            self.count += 1
            if self.keep:
                self.mails.append({"rcpt": list(envelope.rcpt_tos), "raw": raw})
            if self.maildir is not None:
                self._deliver(raw if isinstance(raw, bytes) else raw.encode())
        return f"250 OK queued as {uuid.uuid4().hex[:12]}"

    def _deliver(self, raw: bytes) -> None:
        # Maildir delivery (tmp/ then rename into new/), without mailbox.Maildir's per-mail
        # scans, which cost ~3 ms a mail here and would make the server the bottleneck
        name = f"{time.time():.6f}.{os.getpid()}_{self.count}.{self.host}"
        tmp = self.maildir / "tmp" / name
        with open(tmp, "wb") as f:
            f.write(raw)
        os.rename(tmp, self.maildir / "new" / name)

    def parsed(self) -> list[dict]:
        with self.lock:
            mails = list(self.mails)
        out = []
        for m in mails:
            msg = email.message_from_bytes(m["raw"], policy=email.policy.default)
            out.append({"rcpt": m["rcpt"], "subject": str(msg["Subject"]), "message_id": msg["X-Gatehouse-Message"],
                        "event": msg["X-Gatehouse-Event"], "body": msg.get_content()})
        return out


class SmtpServer:
    """aiosmtpd in a thread of its own; stop() and start() again on the same port (an outage)."""

    def __init__(self, port: int, maildir: Path | None = None, host: str = "127.0.0.1", keep: bool = True):
        self.host, self.port = host, port
        self.store = MailStore(maildir, keep)
        self.controller: Controller | None = None

    def start(self) -> SmtpServer:
        self.controller = Controller(self.store, hostname=self.host, port=self.port, ready_timeout=10,
                                     data_size_limit=1 << 20)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class FakeProvider:
    """An HTTP server that records requests: the SMS provider's API at /sms, webhook receivers at
    /hooks/<name>. mode: ok (200), fail (500), hang (answers after hang_s)."""

    def __init__(self, port: int, host: str = "127.0.0.1", hook_secrets: dict[str, str] | None = None,
                 api_key: str | None = None):
        self.host, self.port = host, port
        self.mode, self.hang_s = "ok", 10.0
        self.requests: list[dict] = []
        self.hook_secrets = dict(hook_secrets or {})
        self.api_key = api_key
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/requests":
                    with provider.lock:
                        return self._answer(200, {"requests": provider.requests})
                return self._answer(404, {"error": "not found"})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/control":
                    body = json.loads(raw or b"{}")
                    provider.mode = body.get("mode", provider.mode)
                    provider.hang_s = float(body.get("hang_s", provider.hang_s))
                    return self._answer(200, {"mode": provider.mode})
                record = {"path": self.path, "headers": dict(self.headers), "body": raw.decode(errors="replace"),
                          "at": time.time(), "mode": provider.mode}
                if self.path.startswith("/hooks/"):
                    name = self.path.removeprefix("/hooks/")
                    secret = provider.hook_secrets.get(name)
                    record["signature_valid"] = bool(secret) and verify(
                        secret, self.headers.get("X-Gatehouse-Timestamp", ""), raw,
                        self.headers.get("X-Gatehouse-Signature", ""))
                elif provider.api_key and self.headers.get("Authorization") != f"Bearer {provider.api_key}":
                    record["refused"] = "bad api key"
                with provider.lock:
                    provider.requests.append(record)
                if provider.mode == "hang":
                    time.sleep(provider.hang_s)
                if provider.mode in ("fail", "hang"):
                    return self._answer(500, {"error": "provider failure (simulated)"})
                if record.get("refused"):
                    return self._answer(401, {"error": "bad api key"})
                if self.path.startswith("/hooks/") and not record["signature_valid"]:
                    return self._answer(401, {"error": "bad signature"})
                return self._answer(200, {"id": uuid.uuid4().hex[:16], "status": "accepted"})

        self.handler = Handler

    def start(self) -> FakeProvider:
        self.server = ThreadingHTTPServer((self.host, self.port), self.handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="fake-provider", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def received(self, prefix: str = "/") -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"].startswith(prefix)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="local SMTP server and fake SMS/webhook provider")
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--sms-port", type=int, default=8025)
    parser.add_argument("--maildir", default="var/mail")
    parser.add_argument("--hook-secret", action="append", default=[], help="NAME=SECRET for /hooks/NAME")
    parser.add_argument("--sms-key", default=None, help="refuse SMS requests without this bearer key")
    args = parser.parse_args(argv)
    smtp = SmtpServer(args.smtp_port, Path(args.maildir), keep=False).start()
    secrets = dict(s.split("=", 1) for s in args.hook_secret)
    provider = FakeProvider(args.sms_port, hook_secrets=secrets, api_key=args.sms_key).start()
    print(f"SMTP on 127.0.0.1:{args.smtp_port} (mail kept in {args.maildir}); "
          f"SMS provider and webhooks on http://127.0.0.1:{args.sms_port}", flush=True)
    stop = threading.Event()
    import signal
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    provider.stop()
    smtp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
