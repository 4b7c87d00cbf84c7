"""A local fake of Twilio's REST API (Messages.json) for the real Twilio SDK to talk to in tests.

It checks HTTP basic auth, records every request's form, and answers as Twilio does. Some numbers misbehave
on purpose: see FAILURES.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "fake-auth-token-0123456789"

# To-number -> (HTTP status, Twilio error code, extra headers)
FAILURES: dict[str, tuple[int, int | None, dict[str, str]]] = {
    "+447911123450": (429, 20429, {"Retry-After": "7"}),
    "+447911123451": (500, None, {}),
    "+447911123452": (400, 21211, {}),
    "+447911123453": (400, 21610, {}),
}


@dataclass
class FakeTwilio:
    requests: list[dict[str, str]] = field(default_factory=list)
    unauthorised: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeTwilio:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _answer(
                self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                expected = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    fake.unauthorised += 1
                    self._answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
                    return
                if self.path != f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json":
                    self._answer(404, {"code": 20404, "message": "not found", "status": 404})
                    return
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                fake.requests.append(form)
                failure = FAILURES.get(form.get("To", ""))
                if failure is not None:
                    status, code, headers = failure
                    self._answer(status, {"code": code, "message": "failure", "status": status}, headers)
                    return
                self._answer(
                    201,
                    {
                        "sid": "SM" + uuid.uuid4().hex,
                        "account_sid": ACCOUNT_SID,
                        "to": form.get("To"),
                        "from": form.get("From"),
                        "messaging_service_sid": form.get("MessagingServiceSid"),
                        "body": form.get("Body"),
                        "status": "queued",
                        "num_segments": "1",
                        "direction": "outbound-api",
                        "api_version": "2010-04-01",
                    },
                )

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
