"""The HTTP side of `python -m r2gen.app`: three routes, and uvicorn on a socket bound before the model loads.

  GET  /         the page (page.html: self-contained, and its Content-Security-Policy lets it talk to this
                 server only)
  GET  /health   {"ready", "kind", "ckpt", "model", "num_views", "busy", "max_files", "max_file_mb",
                 "max_image_pixels", "max_concurrent_decodes"}
  POST /report   multipart/form-data with 1 to 4 image files (field `files`) -> {"report", "labels", "images"
                 (PNG data URLs, as the model reads them), "files" (their names), "read" (how many the model reads:
                 the first ones)}; for a model trained with a study's context (`context` in /health: the
                 context.* switches on), also the fields `indication`, `comparison`, `prior_report` (text) and
                 `prior` (0 to 4 image files of the prior study), answered with "prior_images", "prior_files"

Every refusal is a 4xx `{"error": "<one line naming the file and the problem>"}`; a bug is a 500 with one line
(the traceback goes to the server's log), and the server keeps serving. A request's files live in a temporary
folder deleted when it is answered.

Hostile pages and files: any web page the user visits can make the browser send requests to 127.0.0.1, so a
request is refused (403) unless its Host header names this server (its bound address, localhost, 127.0.0.1 or
[::1], with its port, or a name in `allowed_hosts`: DNS rebinding sends the attacker's name) and its Origin, when
it has one, is this server too (a cross-site form or fetch has the other site's). An image is refused from its
header when it declares more than `data.max_image_pixels` pixels (413), and at most `max_concurrent_decodes`
requests decode and generate at a time; the others wait for a slot (up to DECODE_WAIT_S, then 503), holding only
their uploaded bytes, so a burst of uploads costs at most that many decoded images of memory.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import tempfile
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from omegaconf import DictConfig, OmegaConf
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException

from r2gen.app.reporter import Reporter
from r2gen.app.uploads import (
    MAX_FILES,
    MAX_TEXT_CHARS,
    TEXT_FIELDS,
    Upload,
    UploadError,
    check_count,
    check_size,
    display_name,
    preview,
    save,
)
from r2gen.boundary import one_line
from r2gen.data.checks import pixel_budget
from r2gen.errors import ConfigError, UserError

log = logging.getLogger(__name__)
# The page's scripts and styles are inline; it may fetch from this server and show data:/blob: images, nothing else.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
       "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
DECODE_WAIT_S = 60  # how long a request waits for a decode slot before a 503
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # Host names always accepted (with the served port)


@dataclass(frozen=True)
class Settings:
    """The app's own keys (conf/app.yaml), checked; `max_pixels` is `data.max_image_pixels`."""

    host: str
    port: int
    max_file_mb: float
    max_pixels: int | None
    max_concurrent_decodes: int
    allowed_hosts: tuple[str, ...]


def create_app(reporter: Reporter, s: Settings) -> FastAPI:
    """The FastAPI app serving `reporter`'s model (no docs pages: FastAPI's load their scripts from a CDN)."""
    app = FastAPI(title="r2gen", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SameSite, allowed_hosts=s.allowed_hosts)
    page = files("r2gen.app").joinpath("page.html").read_text(encoding="utf-8")
    max_file_mb = s.max_file_mb
    slots = asyncio.Semaphore(s.max_concurrent_decodes)  # requests decoding (and generating) at a time

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(422, f"{request.method} {request.url.path}: invalid request ({exc.errors()[:1]})")

    @app.get("/")
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"ready": True, **reporter.describe(), "busy": reporter.busy, "max_files": MAX_FILES,
                "max_file_mb": max_file_mb, "max_image_pixels": s.max_pixels,
                "max_concurrent_decodes": s.max_concurrent_decodes}

    @app.post("/report")
    async def report(request: Request) -> JSONResponse:
        slot = False
        try:
            uploads = await read_uploads(request, max_file_mb)
            async with asyncio.timeout(DECODE_WAIT_S):  # waiting here holds no thread, only the uploaded bytes
                slot = await slots.acquire()
            return JSONResponse(await run_in_threadpool(make_report, reporter, uploads, s.max_pixels))
        except TimeoutError:
            if slot:
                raise
            return error(503, f"the server is busy: {s.max_concurrent_decodes} uploads were being read for "
                              f"{DECODE_WAIT_S} s (max_concurrent_decodes={s.max_concurrent_decodes}); try again")
        except UploadError as e:
            return error(e.status, str(e))
        except UserError as e:  # predict.py's own checks on the study: the upload's fault
            return error(422, one_line(e))
        except Exception as e:  # noqa: BLE001 - a bug: one line to the browser, the traceback to the log
            log.exception("POST /report failed")
            return error(500, f"internal error ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                              f"the server's log has the traceback")
        finally:
            if slot:
                slots.release()

    return app


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


class SameSite:
    """ASGI middleware: a request whose Host is not this server, or whose Origin is another site, gets a one-line
    403 before any route (or the body) is read."""

    def __init__(self, app, allowed_hosts: tuple[str, ...] = ()):
        self.app, self.allowed = app, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            problem = request_problem(Headers(scope=scope), scope.get("server"), self.allowed)
            if problem:
                await error(403, f"{scope['method']} {scope['path']}: {problem}")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def request_problem(headers: Headers, server: tuple[str, int] | None, allowed: tuple[str, ...]) -> str | None:
    """Why a request is not from this server's own page or a local client (None: it may be answered). `server`:
    the (address, port) the connection came in at."""
    port = server[1] if server else "<port>"
    host = headers.get("host")
    if host is None or not is_this_server(host, server, allowed):
        shown = "none" if host is None else repr(host[:100])
        return (f"Host {shown} is not an address this server answers to (a page on another site may not use it); "
                f"open the page at http://127.0.0.1:{port}/, or add the name to allowed_hosts=[...]")
    origin = headers.get("origin")
    if origin is not None:
        scheme, _, hostport = origin.partition("://")
        if scheme != "http" or "/" in hostport or not is_this_server(hostport, server, allowed):
            return (f"cross-origin request refused (Origin {origin[:100]!r}): only this server's own page may send "
                    f"requests; open it at http://127.0.0.1:{port}/")
    return None


def is_this_server(hostport: str, server: tuple[str, int] | None, allowed: tuple[str, ...]) -> bool:
    """Does `hostport` (a Host header, an Origin's host[:port]) name this server: a loopback name or the address
    the connection came in at, with its port, or a name `allowed` lists (alone: at any port; name:port: at that
    port; "*": anything)?"""
    hostport = hostport.lower()
    if hostport.startswith("["):  # [v6 address][:port]
        name, _, rest = hostport.partition("]")
        name, port = name + "]", rest.removeprefix(":")
    else:
        name, _, port = hostport.partition(":")
    if not name or (port and not port.isdigit()):
        return False
    if "*" in allowed or hostport in allowed or name in allowed:
        return True
    if server is None:
        return False
    address = f"[{server[0]}]" if ":" in server[0] else server[0]
    return int(port or 80) == server[1] and name in {*LOOPBACK_NAMES, address}


async def read_uploads(request: Request, max_file_mb: float) -> Upload:
    """The request's files as (display name, bytes), the study's and its prior's, and its texts; their number and
    sizes checked before anything is kept."""
    length = request.headers.get("content-length")
    if length is None and "transfer-encoding" not in request.headers:
        length = "0"  # no body at all
    if length is None or not length.isdigit():  # a chunked body: its size is unknown until read whole
        raise UploadError("the upload has no Content-Length; send the files as a multipart/form-data POST", 411)
    limit = 2 * MAX_FILES * max_file_mb * 2**20 + 2**20  # a study's and its prior's files at the limit, the texts
    if int(length) > limit:
        raise UploadError(f"the upload is {int(length) / 2**20:.1f} MB, over the {limit / 2**20:g} MB a request "
                          f"may carry ({MAX_FILES} files of max_file_mb each, and as many of the prior study); send "
                          f"smaller files", 413)
    try:
        async with request.form(max_files=4 * MAX_FILES, max_fields=4 * MAX_FILES) as form:
            items = form.multi_items()
            texts = {}
            for key, value in items:
                if isinstance(value, UploadFile):
                    continue
                if key not in TEXT_FIELDS:
                    raise UploadError(f"unknown form field {key!r}: the form takes image files (files, and prior "
                                      f"for the prior study) and the texts {', '.join(TEXT_FIELDS)}")
                if len(value) > MAX_TEXT_CHARS:
                    raise UploadError(f"{key}: {len(value):,} characters, over the {MAX_TEXT_CHARS:,} it may have; "
                                      f"send the text itself", 413)
                if value.strip():
                    texts[key] = value.strip()
            parts = [v for k, v in items if isinstance(v, UploadFile) and k != "prior"]
            priors = [v for k, v in items if isinstance(v, UploadFile) and k == "prior"]
            check_count(len(parts))
            check_count(len(priors), prior=True)
            names = [display_name(f.filename, i) for i, f in enumerate(parts)]
            prior_names = [f"prior {display_name(f.filename, i)}" for i, f in enumerate(priors)]
            for name, f in zip(names + prior_names, parts + priors, strict=True):
                if f.size is not None:
                    check_size(name, f.size, max_file_mb)
            files = []
            for name, f in zip(names + prior_names, parts + priors, strict=True):
                data = await f.read()
                check_size(name, len(data), max_file_mb)
                files.append((name, data))
            return Upload(files[: len(parts)], files[len(parts):], texts)
    except HTTPException as e:  # Starlette's multipart parser: a malformed body, too many parts
        raise UploadError(f"the upload is not valid multipart/form-data ({e.detail}); send 1 to {MAX_FILES} image "
                          f"files", 400) from None


def make_report(reporter: Reporter, upload: Upload, max_pixels: int | None) -> dict[str, Any]:
    """Write the study (and its prior's images) into a temporary folder, check (`max_pixels`: the pixel budget) and
    preview each image, generate; the folder is deleted before this returns."""
    with tempfile.TemporaryDirectory(prefix="r2gen-app-") as tmp:
        (Path(tmp) / "prior").mkdir()
        saved = [(save(i, name, data, Path(tmp), max_pixels), name) for i, (name, data) in enumerate(upload.files)]
        saved_prior = [(save(i, name, data, Path(tmp) / "prior", max_pixels), name)
                       for i, (name, data) in enumerate(upload.prior)]
        images = [preview(p, name, max_pixels) for p, name in saved]
        prior_images = [preview(p, name, max_pixels) for p, name in saved_prior]
        context = dict(upload.texts)
        if saved_prior:
            context["prior_image_path"] = [str(p) for p, _ in saved_prior]
        try:
            result = reporter.report([str(p) for p, _ in saved], context)
        except UserError as e:  # name the user's files, not the temporary ones
            message = one_line(e)
            for p, name in saved + saved_prior:
                message = message.replace(str(p), name)
            raise UploadError(message, 422) from None
    n = len(saved)
    read = min(n, reporter.num_views) if reporter.num_views else n
    out = {**result, "images": images, "files": [name for _, name in saved], "read": read}
    if saved_prior:
        out |= {"prior_images": prior_images, "prior_files": [name for _, name in saved_prior]}
    return out


# --- serving ---------------------------------------------------------------------------------------------------
def serve(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Bind `cfg.host`:`cfg.port` (a taken port fails before the model loads), load the model, print the URL and
    serve until Ctrl-C."""
    s = settings(cfg)
    sock = listen(s.host, s.port)
    try:
        reporter = Reporter.load(cfg, overrides)
        server = uvicorn_server(create_app(reporter, s))
        sock.listen(128)  # a browser opened at the printed URL waits in the queue until uvicorn accepts
        print(f"\nr2gen app: {url(sock)}  ({reporter.kind} {reporter.source}; Ctrl-C stops it)", flush=True)
        if not ipaddress.ip_address(sock.getsockname()[0]).is_loopback:
            print(f"host={s.host}: other machines can reach this page and send it images (at this machine's "
                  f"address, or the names allowed_hosts lists)", flush=True)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shut down gracefully, then re-raised the Ctrl-C: the way to stop
            print("r2gen app: stopped", flush=True)
    finally:
        sock.close()


def settings(cfg: DictConfig) -> Settings:
    host, port, mb = cfg.host, cfg.port, cfg.max_file_mb
    n, names = cfg.max_concurrent_decodes, cfg.allowed_hosts
    if not isinstance(host, str) or not host:
        raise ConfigError(f"host={host!r}: give an address to listen on, e.g. host=127.0.0.1")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port={port!r}: choose a port number from 1 to 65535, or 0 for any free port")
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or mb <= 0:
        raise ConfigError(f"max_file_mb={mb!r}: choose a positive number of megabytes, e.g. max_file_mb=64")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"max_concurrent_decodes={n!r}: choose how many uploads may be decoded at a time, a "
                          f"whole number from 1, e.g. max_concurrent_decodes=2")
    if not OmegaConf.is_list(names) or not all(isinstance(h, str) and h and h == h.strip() for h in names):
        raise ConfigError(f"allowed_hosts={names!r}: give a list of the host names (or name:port) the page is "
                          f"reached at besides this machine's address, e.g. allowed_hosts=[myserver.lan]")
    budget = pixel_budget(cfg.data.get("max_image_pixels"))
    return Settings(host, port, float(mb), budget, n, tuple(h.lower() for h in names))


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port`, not yet listening (uvicorn serves on it)."""
    sock = None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        if sock is not None:
            sock.close()
        raise ConfigError(f"host={host} port={port}: cannot listen there ({e.strerror or e}); choose another "
                          f"port=<n> (0: any free one), or host=127.0.0.1") from None
    return sock


def url(sock: socket.socket) -> str:
    """The page's address; a wildcard host is shown as this machine's loopback."""
    host, port = sock.getsockname()[:2]
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"http://{f'[{ip}]' if ip.version == 6 else ip}:{port}/"


def uvicorn_server(app: FastAPI, log_level: str = "info") -> uvicorn.Server:
    """uvicorn for `app`, logging through the root logger (Hydra's console and file) rather than its own set-up."""
    return uvicorn.Server(uvicorn.Config(app, log_config=None, log_level=log_level, timeout_graceful_shutdown=5))
