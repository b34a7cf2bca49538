"""python -m r2gen.app: the local web page, driven over real HTTP (stdlib urllib) against uvicorn on a free port.

One server (a thread in this process) serves the session's tiny demo checkpoint for the module; its reports are
compared with `r2gen.predict.predict` on the same files. The page is checked once in headless Chromium when a
`chromium` binary is on PATH. Skipped as a whole without the `app` extra (FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import importlib.util
import io
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.error import HTTPError

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

from r2gen.app import require_extra, serve  # noqa: E402
from r2gen.app import server as server_module  # noqa: E402
from r2gen.app.reporter import Reporter, check_export  # noqa: E402
from r2gen.app.server import create_app, listen, request_problem, settings  # noqa: E402
from r2gen.data.images import load_image  # noqa: E402
from r2gen.errors import ConfigError, InputError, MissingFileError  # noqa: E402
from r2gen.predict import predict  # noqa: E402

from .helpers import bombs  # noqa: E402
from .helpers.cli import cli_env  # noqa: E402
from .helpers.config import compose_cfg  # noqa: E402
from .helpers.dicom import RAMP, write_dicom  # noqa: E402
from .helpers.files import read_jsonl, snapshot  # noqa: E402
from .helpers.paths import ROOT  # noqa: E402
from .helpers.serving import Running, get, post  # noqa: E402

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
MAX_FILE_MB = 0.05  # 51 KB: the test images are a few KB; the oversize one is 100 KB


@pytest.fixture(scope="module")
def ckpt(demo_run) -> Path:
    return demo_run / "checkpoints" / "last.ckpt"


APP = ["port=0", f"max_file_mb={MAX_FILE_MB}"]


@pytest.fixture(scope="module")
def app_cfg(ckpt, cache_dir, tmp_path_factory):
    return compose_cfg("app", [f"ckpt={ckpt}", *FAST, *APP], tmp_path_factory.mktemp("app_run"), cache_dir)


@pytest.fixture(scope="module")
def reporter(ckpt, app_cfg) -> Reporter:
    return Reporter.load(app_cfg, overrides=[f"ckpt={ckpt}", *FAST, *APP])


@pytest.fixture(scope="module")
def server(reporter, app_cfg):
    running = Running(create_app(reporter, settings(app_cfg)))
    yield running
    running.stop()


def png(path: Path, seed: int, size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(path)
    return path


def predicted(ckpt, files: list[Path], tmp_path: Path, cache_dir: Path) -> dict:
    """What `predict.py ckpt=<ckpt> input=[files] labels=true` writes for them."""
    o = [f"ckpt={ckpt}", *FAST, f"input=[{','.join(map(str, files))}]", "labels=true"]
    (row,) = read_jsonl(predict(compose_cfg("predict", o, tmp_path / "predict_run", cache_dir), overrides=o))
    return row


def pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def test_health_names_the_model_and_is_ready(server, ckpt):
    status, _, text = get(server.url + "/health")
    h = json.loads(text)
    assert status == 200 and h["ready"] is True and h["busy"] is False
    assert h["kind"] == "checkpoint" and h["ckpt"] == str(ckpt) and h["model"].startswith("resnet10t + ")
    assert h["num_views"] == 2 and h["max_files"] == 4 and h["max_file_mb"] == MAX_FILE_MB


def test_an_uploaded_dicom_gets_the_report_predict_writes(server, ckpt, tmp_path, cache_dir, monkeypatch):
    """The issue's done-when: the page's API returns a report for an uploaded DICOM (MONOCHROME1, no suffix on
    the upload: told by its magic bytes), equal to predict.py's for the same file, labels included; its preview is
    the image as the model reads it, and the request's temporary folder is gone once it is answered."""
    (tmp_path / "study").mkdir()
    dcm = write_dicom(tmp_path / "study" / "frontal.dcm", RAMP, photometric="MONOCHROME1")
    before = snapshot(tmp_path / "study")
    uploads = tmp_path / "server_tmp"
    uploads.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))  # where the in-process server makes request folders
    status, body = post(server.url, [("1.2.840.113619.2.55", dcm.read_bytes())])
    assert status == 200, body
    expected = predicted(ckpt, [dcm], tmp_path, cache_dir)
    assert body["report"] == expected["report"] and isinstance(body["report"], str)
    assert body["labels"] == expected["labels"] and len(body["labels"]) == 14
    assert body["files"] == ["1.2.840.113619.2.55"] and body["read"] == 1
    (preview,) = body["images"]
    assert np.array_equal(pixels(preview), np.asarray(load_image(dcm)))  # MONOCHROME1 inverted, windowed
    assert pixels(preview)[0, 0, 0] == 255  # the ramp's low end is bright once inverted
    assert list(uploads.iterdir()) == []  # the request's folder was deleted
    assert snapshot(tmp_path / "study") == before


def test_two_pngs_are_one_study_and_a_third_is_shown_but_not_read(server, ckpt, tmp_path, cache_dir):
    a, b, c = png(tmp_path / "s" / "a.png", 1), png(tmp_path / "s" / "b.png", 2), png(tmp_path / "s" / "c.png", 3)
    status, body = post(server.url, [(p.name, p.read_bytes()) for p in (a, b)])
    assert status == 200, body
    expected = predicted(ckpt, [a, b], tmp_path, cache_dir)
    assert body["report"] == expected["report"] and body["labels"] == expected["labels"]
    assert body["files"] == ["a.png", "b.png"] and body["read"] == 2 and len(body["images"]) == 2
    assert np.array_equal(pixels(body["images"][1]), np.asarray(load_image(b)))
    # data.num_views=2: a third image is previewed but, as in predict.py, not read
    status, three = post(server.url, [(p.name, p.read_bytes()) for p in (a, b, c)])
    assert status == 200 and three["report"] == body["report"] and three["read"] == 2 and len(three["images"]) == 3


def corrupt_dicom(tmp_path: Path) -> bytes:
    """The DICOM preamble and magic, then a malformed header (an overlong UID) and no pixel data."""
    return b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7fnot really dicom" * 4


BAD = {  # case -> (files, status, what the message must say)
    "no file": ([], 400, "no file uploaded"),
    "five files": ([(f"v{i}.png", None) for i in range(5)], 400, "5 files uploaded: a study is 1 to 4 images"),
    "not an image": ([("notes.txt", b"hello, not an image\n")], 415, "notes.txt: not an image r2gen reads"),
    "text named .png": ([("scan.png", b"hello, not an image\n")], 422, "scan.png: unreadable"),
    "truncated DICOM": ([("cut.dcm", "truncated")], 422, "cut.dcm: truncated DICOM pixel data"),
    "corrupt DICOM": ([("broken", "corrupt")], 422, "broken: DICOM file without pixel data"),
    "empty file": ([("empty.png", b"")], 422, "empty.png: empty file (0 bytes)"),
    "file too large": ([("huge.png", b"\0" * 100_000)], 413, "huge.png: 0.1 MB, over the 0.05 MB limit"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # pydicom on the corrupt file's header
def test_a_bad_upload_is_a_one_line_4xx_and_the_server_keeps_serving(server, tmp_path, case):
    files, status, says = BAD[case]
    good = png(tmp_path / "ok.png", 0).read_bytes()
    dicom = write_dicom(tmp_path / "x.dcm", RAMP).read_bytes()
    stand_in = {None: good, "truncated": dicom[:-500], "corrupt": corrupt_dicom(tmp_path)}
    files = [(name, stand_in[data] if data is None or isinstance(data, str) else data) for name, data in files]
    code, body = post(server.url, files)
    assert code == status, body
    assert set(body) == {"error"} and says in body["error"], body
    assert "\n" not in body["error"] and "Traceback" not in body["error"] and "r2gen-app-" not in body["error"]
    assert get(server.url + "/health")[0] == 200
    code, ok = post(server.url, [("ok.png", good)])  # and still writes reports
    assert code == 200 and ok["report"] is not None


def test_a_request_too_large_is_refused_by_its_header_before_its_body_is_read(server):
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    try:
        conn.putrequest("POST", "/report")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(10 * 2**30))  # 10 GB announced, not one byte sent
        conn.endheaders()
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read()) == {
            "error": "the upload is 10240.0 MB, over the 1.4 MB a request may carry (4 files of max_file_mb each, "
                     "and as many of the prior study); send smaller files"}
    finally:
        conn.close()
    assert get(server.url + "/health")[0] == 200


def test_a_body_that_is_not_multipart_or_a_wrong_route_is_a_json_error(server):
    code, body = post(server.url, body=b'{"files": []}', content_type="application/json")
    assert code == 400 and "no file uploaded" in body["error"]
    code, body = post(server.url, body=b"--x\r\ngarbage", content_type="multipart/form-data; boundary=x")
    assert 400 <= code < 500 and set(body) == {"error"}
    with pytest.raises(HTTPError) as e:
        get(server.url + "/report")
    assert e.value.code == 405 and json.loads(e.value.read())["error"] == "GET /report: Method Not Allowed"


def test_generations_run_one_at_a_time(server, reporter, tmp_path, monkeypatch):
    """Two browsers at once: both get their report, and the model is never entered by both together."""
    inside, overlap, generate = [], [], reporter.generate

    def slow(paths, context):
        overlap.append(len(inside))
        inside.append(1)
        time.sleep(0.3)
        inside.pop()
        return generate(paths, context)

    monkeypatch.setattr(reporter, "generate", slow)
    data = png(tmp_path / "a.png", 5).read_bytes()
    results = []
    threads = [threading.Thread(target=lambda: results.append(post(server.url, [("a.png", data)])))
               for _ in range(2)]
    for t in threads:
        t.start()
    busy = False
    while not busy and any(t.is_alive() for t in threads):  # /health answers while a report is being written
        busy = json.loads(get(server.url + "/health")[2])["busy"]
    assert busy
    for t in threads:
        t.join(60)
    assert [code for code, _ in results] == [200, 200] and results[0][1]["report"] == results[1][1]["report"]
    assert overlap == [0, 0]


def test_the_page_is_self_contained_and_may_only_talk_to_its_server(server):
    status, headers, page = get(server.url + "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'id="drop"' in page and 'type="file"' in page and 'name="files"' in page
    assert not re.search(r"https?://|(src|href)=\"//", page), "no CDN, no remote URL"
    assert re.findall(r"fetch\(\"([^\"]*)\"", page) == ["/health", "/report"]
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium or chromium-browser on PATH (apt-get install chromium)")
def test_headless_chromium_loads_the_page_and_it_talks_only_to_127_0_0_1(server, tmp_path):
    """The page in a real browser: its DOM has the drop zone, its script ran (it filled in the model from
    /health), and every request the page made (Chromium's net log, by initiator) went to this server. Chromium's
    own background requests (updates, time) have no page initiator; the resolver rule keeps them off the network."""
    netlog = tmp_path / "net.json"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}",
                        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                        "--virtual-time-budget=5000", f"--log-net-log={netlog}", "--dump-dom", server.url + "/"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    dom = r.stdout
    assert 'id="drop"' in dom and 'id="files"' in dom and "Drop 1 to 4 images" in dom
    model = json.loads(get(server.url + "/health")[2])["model"]
    assert re.search(r'<span id="model">' + re.escape(model), dom), "the page's script did not fill in /health"

    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    requests = [(e["params"]["url"], e["params"].get("initiator")) for e in log["events"]
                if e["type"] == start and "url" in e.get("params", {})]
    by_page = [u for u, origin in requests if origin == server.url]
    assert server.url + "/health" in by_page
    assert all(u.startswith(server.url + "/") for u in by_page), by_page
    assert {origin for _, origin in requests} <= {server.url, "not an origin", None}  # nothing else initiated any


def test_settings_and_a_taken_port_are_one_line_errors(make_cfg):
    cfg = make_cfg("ckpt=x.ckpt", "port=70000", config_name="app", small=False)
    with pytest.raises(ConfigError, match=r"port=70000: choose a port number"):
        settings(cfg)
    with pytest.raises(ConfigError, match=r"max_file_mb=-1"):
        settings(make_cfg("ckpt=x.ckpt", "max_file_mb=-1", config_name="app", small=False))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(ConfigError, match=rf"port={taken.getsockname()[1]}: cannot listen there"):
            listen("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_an_export_folder_is_checked_before_its_code_runs(tmp_path):
    with pytest.raises(MissingFileError, match="a folder without config.json"):
        check_export(tmp_path, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "auto_map": {"AutoModel": "x.Other"}}))
    with pytest.raises(InputError, match="auto_map names no R2Gen model"):
        check_export(tmp_path, tmp_path)


def test_without_the_extra_serve_names_it(make_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    with pytest.raises(ConfigError, match=r'needs uvicorn, not installed: pip install -e "\.\[app\]"'):
        require_extra()
    with pytest.raises(ConfigError, match="needs uvicorn"):
        serve(make_cfg("ckpt=x.ckpt", config_name="app", small=False), overrides=[])


@pytest.mark.skipif(importlib.util.find_spec("r2gen.export") is None, reason="r2gen.export is not there yet")
@pytest.mark.slow
def test_an_export_folder_serves_the_checkpoints_reports(ckpt, tmp_path, cache_dir):
    """`ckpt=<folder python -m r2gen.export wrote>`: loaded with AutoModel (trust_remote_code), same report."""
    out = tmp_path / "exported"
    r = subprocess.run([sys.executable, "-m", "r2gen.export", f"ckpt={ckpt}", f"out={out}", *FAST], cwd=tmp_path,
                       env=cli_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    o = [f"ckpt={out}", *APP]
    cfg = compose_cfg("app", o, tmp_path / "app_run", cache_dir)
    reporter = Reporter.load(cfg, overrides=o)
    running = Running(create_app(reporter, settings(cfg)))
    try:
        h = json.loads(get(running.url + "/health")[2])
        assert h["kind"] == "export" and h["model"].startswith("resnet10t + ") and h["num_views"] == 2
        dcm = write_dicom(tmp_path / "frontal.dcm", RAMP)
        status, body = post(running.url, [("frontal.dcm", dcm.read_bytes())])
        assert status == 200 and isinstance(body["report"], str) and len(body["labels"]) == 14, body
    finally:
        running.stop()
    expected = predicted(ckpt, [dcm], tmp_path, cache_dir)  # the export writes the checkpoint's reports
    assert body["report"] == expected["report"] and body["labels"] == expected["labels"]


# --- as a user runs it: a fresh process ------------------------------------------------------------------------
@pytest.mark.slow
def test_python_m_r2gen_app_prints_its_url_serves_and_stops_on_ctrl_c(ckpt, tmp_path, cache_dir):
    p = subprocess.Popen([sys.executable, "-m", "r2gen.app", f"ckpt={ckpt}", "port=0", *FAST], cwd=tmp_path,
                         env=cli_env(cache_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (line := p.stdout.readline()):
            lines.append(line)
            if m := re.match(r"r2gen app: (http://127\.0\.0\.1:\d+)/ ", line):
                break
        assert m, "".join(lines)[-3000:]
        url = m.group(1)
        assert json.loads(get(url + "/health")[2])["ready"] is True
        (tmp_path / "in").mkdir()
        dcm = write_dicom(tmp_path / "in" / "a.dcm", RAMP)
        status, body = post(url, [("a.dcm", dcm.read_bytes())])
        assert status == 200 and isinstance(body["report"], str)
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # nothing but Hydra's record of the run and the folder's run lock was written: no upload, no report
    written = {str(f.relative_to(tmp_path)) for f in tmp_path.rglob("*") if f.is_file()} - {"in/a.dcm"}
    assert all(re.match(r"outputs/app/[\d-]+/[\d-]+/(\.hydra/\w+\.yaml|cli\.log|\.r2gen-lock)$", f) for f in written), written


@pytest.mark.slow
def test_without_the_extra_python_m_r2gen_app_is_one_line(tmp_path, cache_dir):
    """r2gen imports without FastAPI/uvicorn; the command says which extra to install, in one line, exit 2."""
    code = ("import sys; sys.modules.update(fastapi=None, uvicorn=None, python_multipart=None, multipart=None); "
            "import r2gen, r2gen.app, r2gen.app.reporter, r2gen.cli, r2gen.predict; "
            "sys.argv = ['r2gen.app', 'ckpt=x.ckpt']; r2gen.cli.app_main()")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**cli_env(cache_dir), "R2GEN_TRACEBACK": ""},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.startswith('error: python -m r2gen.app needs fastapi, uvicorn, python-multipart, not installed: '
                               'pip install -e ".[app]"'), r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def test_the_page_ships_in_the_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"r2gen.app" = ["page.html"]' in text and 'r2gen-app = "r2gen.cli:app_main"' in text
    assert os.path.isfile(ROOT / "r2gen" / "app" / "page.html")


# --- hostile pages and files -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bomb_uploads(tmp_path_factory) -> list[tuple[str, bytes]]:
    """The three bombs of tests/helpers/bombs.py as uploads (the deflated DICOM is 261 KB)."""
    d = tmp_path_factory.mktemp("bombs")
    made = [bombs.deflated_dicom(d / "deflated.dcm"), bombs.one_bit_png(d / "bomb.png"), bombs.rle_dicom(d / "rle.dcm")]
    return [(p.name, p.read_bytes()) for p in made]


BOMB_SAYS = {"deflated.dcm": "16384x16384 pixels, 8 bit = 256.0 MiB", "bomb.png": "13000x13000 pixels, 1 bit = 161.2 MiB",
             "rle.dcm": "65535x65535 pixels, 16 bit = 8.0 GiB"}


@pytest.fixture(scope="module")
def guarded(reporter, app_cfg):
    """A second server that takes 1 MB files (the bombs fit) and decodes 2 uploads at a time."""
    running = Running(create_app(reporter, dataclasses.replace(settings(app_cfg), max_file_mb=1.0,
                                                               max_concurrent_decodes=2)))
    yield running
    running.stop()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, before r2gen refuses it
def test_each_bomb_upload_is_a_413_naming_the_file_its_size_and_the_key(guarded, bomb_uploads):
    for name, data in bomb_uploads:
        start = time.monotonic()
        code, body = post(guarded.url, [(name, data)])
        assert code == 413 and set(body) == {"error"}, body
        assert body["error"].startswith(f"{name}: {BOMB_SAYS[name]} decoded: over the pixel budget "
                                        f"data.max_image_pixels=64000000; if it is a real image, set "
                                        f"data.max_image_pixels="), body
        assert "\n" not in body["error"] and "r2gen-app-" not in body["error"]
        assert time.monotonic() - start < 5


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_burst_of_bomb_uploads_is_refused_two_at_a_time_in_bounded_memory(guarded, bomb_uploads, monkeypatch):
    """Six at once (each bomb twice) against the running app: all refused (413), at most max_concurrent_decodes=2
    of them inside the decoding step together, and the peak RSS of this process (the server's) grows < 1 GB
    (they declare 17 GB between them)."""
    inside, most, real = [], [], server_module.make_report

    def counted(*args):
        inside.append(1)
        most.append(len(inside))
        try:
            time.sleep(0.3)  # long enough that the six overlap
            return real(*args)
        finally:
            inside.pop()

    monkeypatch.setattr(server_module, "make_report", counted)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results, start = [], time.monotonic()
    threads = [threading.Thread(target=lambda u=u: results.append(post(guarded.url, [u])))
               for u in bomb_uploads * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(code for code, _ in results) == [413] * 6, results
    assert max(most) == 2 and len(most) == 6
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 2**20 < 1.0  # KB -> GB
    assert time.monotonic() - start < 30
    assert get(guarded.url + "/health")[0] == 200


def raw(url: str, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    """A request with exactly these headers (Host included), as a hostile page or a rebinding DNS makes it."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if r.headers.get("content-type") == "application/json" else {"body": data}
    finally:
        conn.close()


def test_a_cross_site_request_or_a_foreign_host_is_a_one_line_403(server, tmp_path):
    """Any page the user visits can have the browser POST to 127.0.0.1 (its Origin is that site) or rebind its
    own name to 127.0.0.1 (the Host is that name): both refused before the body is read; the page's own requests
    and local clients are answered."""
    port = server.url.rsplit(":", 1)[1]
    own = f"127.0.0.1:{port}"
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'.encode()
            + png(tmp_path / "a.png", 0).read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    form = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    code, answer = raw(server.url, "POST", "/report", {"Host": own, "Origin": "http://evil.example.com", **form}, body)
    assert code == 403 and answer == {"error": "POST /report: cross-origin request refused (Origin "
                                               "'http://evil.example.com'): only this server's own page may send "
                                               f"requests; open it at http://127.0.0.1:{port}/"}
    code, answer = raw(server.url, "GET", "/health", {"Host": "evil.example.com"})
    assert code == 403 and answer["error"].startswith("GET /health: Host 'evil.example.com' is not an address "
                                                      "this server answers to")
    assert "allowed_hosts=[...]" in answer["error"]
    for bad in ({"Host": f"evil.example.com:{port}"}, {"Host": own, "Origin": "null"},
                {"Host": own, "Origin": f"https://{own}"}, {"Host": f"127.0.0.1:{int(port) + 1}"}):
        assert raw(server.url, "GET", "/health", bad)[0] == 403, bad
    assert raw(server.url, "GET", "/health", {})[0] == 400  # no Host at all: uvicorn's own refusal
    for ok in ({"Host": own}, {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
               {"Host": f"[::1]:{port}"}):
        assert raw(server.url, "GET", "/health", ok)[0] == 200, ok
    code, answer = raw(server.url, "POST", "/report", {"Host": own, "Origin": f"http://{own}", **form}, body)
    assert code == 200 and isinstance(answer["report"], str)  # the page's own upload


def test_allowed_hosts_adds_names_and_bad_app_settings_are_one_line_errors(make_cfg):
    from starlette.datastructures import Headers

    served = ("127.0.0.1", 8000)
    ask = lambda allowed, **h: request_problem(Headers(h), served, allowed)  # noqa: E731
    assert ask((), host="myserver.lan:8000") is not None
    assert ask(("myserver.lan",), host="myserver.lan:8000", origin="http://myserver.lan:8000") is None
    assert ask(("myserver.lan:9000",), host="myserver.lan:8000") is not None
    assert ask(("*",), host="anything") is None
    cfg = make_cfg("ckpt=x.ckpt", "allowed_hosts=[Myserver.lan]", config_name="app", small=False)
    assert settings(cfg).allowed_hosts == ("myserver.lan",) and settings(cfg).max_pixels == 64_000_000
    with pytest.raises(ConfigError, match=r"max_concurrent_decodes=0: choose how many uploads"):
        settings(make_cfg("ckpt=x.ckpt", "max_concurrent_decodes=0", config_name="app", small=False))
    with pytest.raises(ConfigError, match=r"allowed_hosts='x': give a list of the host names"):
        settings(make_cfg("ckpt=x.ckpt", "allowed_hosts=x", config_name="app", small=False))
    with pytest.raises(ConfigError, match=r"data.max_image_pixels=0: choose a positive whole number"):
        settings(make_cfg("ckpt=x.ckpt", "data.max_image_pixels=0", config_name="app", small=False))
