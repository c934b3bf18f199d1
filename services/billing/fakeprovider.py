"""A local online-payment provider for the demo and the tests: a real HTTP server (stdlib),
the same shape as a real provider's API, with HMAC-SHA256 signed webhooks.

    python -m services.billing.fakeprovider --port 8030

API (JSON):
  POST /payments {reference, amount_fen, currency, notify_url, description} -> {provider_ref, pay_url}
       (the same reference again returns the first payment: references are unique)
  GET  /payments/by-reference/<reference> -> {provider_ref, reference, status, amount_fen, currency, pay_url}
  GET  /pay/<provider_ref>          a page with a Pay button (what the payer's phone would show)
  POST /pay/<provider_ref>?result=succeeded|failed&deliver=1|0
       the payer pays (or fails); deliver=0 loses the webhook, so only a query finds the result
The webhook is POSTed to notify_url with header X-Fake-Signature: sha256=<hex HMAC of the body>,
retried up to 3 times while the receiver answers 5xx or is unreachable.
"""
from __future__ import annotations

import argparse
import html
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from services.billing import rules
from services.billing.online import SIGNATURE_HEADER, webhook_secret


class FakeProviderServer:
    def __init__(self, host="127.0.0.1", port=0, secret: str | None = None):
        self.secret = secret or webhook_secret()
        self.payments: dict[str, dict] = {}
        self.by_reference: dict[str, str] = {}
        self.lock = threading.Lock()
        self.deliveries: list[tuple[str, int]] = []     # (provider_ref, HTTP status or 0)
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def webhook_body(self, p: dict) -> bytes:
        return json.dumps({"provider_ref": p["provider_ref"], "reference": p["reference"], "status": p["status"],
                           "amount_fen": p["amount_fen"], "currency": p["currency"]}).encode()

    def deliver(self, p: dict, attempts=3) -> int:
        body = self.webhook_body(p)
        for attempt in range(attempts):
            req = urllib.request.Request(p["notify_url"], data=body, method="POST", headers={
                "Content-Type": "application/json", SIGNATURE_HEADER: rules.sign(self.secret, body)})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.deliveries.append((p["provider_ref"], status))
            if 200 <= status < 500:
                return status
            time.sleep(0.2 * (attempt + 1))
        return status

    def complete(self, provider_ref: str, result="succeeded", deliver=True) -> dict:
        with self.lock:
            p = self.payments[provider_ref]
            if p["status"] == "pending":
                p["status"] = result
        if deliver:
            self.deliver(p)
        return p

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):
                pass

            def _json(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if url.path == "/payments":
                    try:
                        req = json.loads(raw)
                        ref, amount = str(req["reference"]), int(req["amount_fen"])
                    except (ValueError, KeyError, TypeError):
                        return self._json(400, {"error": "reference and amount_fen are required"})
                    with server.lock:
                        pid = server.by_reference.get(ref)
                        if pid is None:
                            pid = "fp_" + uuid.uuid4().hex[:20]
                            server.by_reference[ref] = pid
                            server.payments[pid] = {"provider_ref": pid, "reference": ref, "amount_fen": amount,
                                                    "currency": req.get("currency", "CNY"), "status": "pending",
                                                    "notify_url": req.get("notify_url", ""),
                                                    "description": req.get("description", ""),
                                                    "pay_url": f"{server.url}/pay/{pid}"}
                        p = server.payments[pid]
                    return self._json(201, {"provider_ref": pid, "pay_url": p["pay_url"]})
                if url.path.startswith("/pay/"):
                    pid = url.path.rsplit("/", 1)[-1]
                    if pid not in server.payments:
                        return self._json(404, {"error": "unknown payment"})
                    q = parse_qs(url.query)
                    result = q.get("result", ["succeeded"])[0]
                    if result not in ("succeeded", "failed"):
                        return self._json(400, {"error": "result must be succeeded or failed"})
                    deliver = q.get("deliver", ["1"])[0] != "0"
                    # answer the payer at once; the notification goes out on its own thread
                    with server.lock:
                        p = server.payments[pid]
                        if p["status"] == "pending":
                            p["status"] = result
                    if deliver:
                        threading.Thread(target=server.deliver, args=(p,), daemon=True).start()
                    return self._json(200, {"provider_ref": pid, "status": p["status"]})
                return self._json(404, {"error": "not found"})

            def do_GET(self):
                url = urlparse(self.path)
                if url.path.startswith("/payments/by-reference/"):
                    pid = server.by_reference.get(url.path.rsplit("/", 1)[-1])
                    if pid is None:
                        return self._json(404, {"status": "unknown"})
                    p = server.payments[pid]
                    return self._json(200, {k: p[k] for k in ("provider_ref", "reference", "status", "amount_fen",
                                                              "currency", "pay_url")})
                if url.path.startswith("/pay/"):
                    p = server.payments.get(url.path.rsplit("/", 1)[-1])
                    if p is None:
                        return self._json(404, {"error": "unknown payment"})
                    page = (f"<!doctype html><meta charset=utf-8><title>Fake pay</title>"
                            f"<h1>Pay {rules.yuan(p['amount_fen'])} {html.escape(p['currency'])}</h1>"
                            f"<p>{html.escape(p['description'])} &middot; status: {p['status']}</p>"
                            f"<form method=post action='/pay/{p['provider_ref']}?result=succeeded'>"
                            f"<button>Pay</button></form>"
                            f"<form method=post action='/pay/{p['provider_ref']}?result=failed'>"
                            f"<button>Decline</button></form>").encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                    return None
                return self._json(404, {"error": "not found"})

        return Handler


def main(argv=None):
    parser = argparse.ArgumentParser(description="Gatehouse's local fake online-payment provider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8030)
    args = parser.parse_args(argv)
    server = FakeProviderServer(args.host, args.port)
    print(f"fake payment provider on {server.url} (webhooks signed with HMAC-SHA256)", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
