"""The app served from a thread on a free port, and the HTTP calls the tests make to it (stdlib urllib)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from urllib.error import HTTPError

import uvicorn  # noqa: F401 - the app extra: the modules using this skip without it

from r2gen.app.server import listen, uvicorn_server


class Running:
    """uvicorn serving `app` from a thread; `url` is its address."""

    def __init__(self, app):
        self.sock = listen("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn_server(app, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def get(url: str) -> tuple[int, dict, str]:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.status, dict(r.headers), r.read().decode()


def post(url: str, files: list[tuple[str, bytes]] | None = None, body: bytes | None = None,
         content_type: str | None = None, prior: list[tuple[str, bytes]] = (), texts: dict[str, str] | None = None
         ) -> tuple[int, dict]:
    """POST /report: `files` as multipart/form-data (field `files`, as the page sends them; `prior`: the prior
    study's, field `prior`; `texts`: text fields), or a raw `body`."""
    if files is not None:
        boundary = uuid.uuid4().hex
        parts = [(f'name="{field}"; filename="{name}"', data) for field, group in (("files", files), ("prior", prior))
                 for name, data in group]
        parts += [(f'name="{k}"', v.encode()) for k, v in (texts or {}).items()]
        body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n"
                        f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                        for disposition, data in parts) + f"--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url + "/report", data=body if body is not None else b"", headers=headers,
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except HTTPError as e:
        with e:
            return e.code, json.loads(e.read())
