"""The `tgi` backend in front of a TGI behind a bearer token, and its request timeout.

The TGI side is our own hf teacher's TGI-compatible routes with job tokens on (they refuse a
call without a known `Authorization: Bearer <token>`), so a backend that starts and scores
through them has sent the token. A small loopback server also records the headers it gets and
stalls on scoring, for the timeout. The backend runs in .venv-tgi (the real `text-generation`
client), as in test_tgi_backend.py.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from tropd.errors import ConfigError
from tropd.teacher.client import TeacherClient
from tropd.teacher.config import load_config
from tropd.teacher.server import ServerHandle, start_server
from tropd.teacher.text_tokenizer import TextTokenizer

TOKEN = "tgi-teacher-token-0123456789"
PROMPT = "the answer is the sum of the first digit"
STALL_S = 6.0
# Runs in .venv-tgi: reads {url, stall_url, model, token, ids} on stdin, prints a JSON report.
BACKEND_SCRIPT = r"""
import json, sys, time
import numpy as np
from pydantic import ValidationError
from tropd.teacher.backends.base import ScoreTask
from tropd.teacher.backends.tgi import TGIBackend, TGIOptions
from tropd.teacher.errors import TeacherError

args = json.loads(sys.stdin.read())
ids = np.asarray(args["ids"], dtype=np.int32)
task = ScoreTask(ids, 1, len(ids))
report = {}
try:
    TGIBackend(TGIOptions(url=args["url"], model_path=args["model"]))
    report["without_token"] = "started"
except TeacherError as exc:
    report["without_token"] = f"{type(exc).__name__}: {exc}"
options = TGIOptions(url=args["url"], model_path=args["model"], token=args["token"])
backend = TGIBackend(options)
backend.warmup()
(scored,) = backend.score([task])
report["logprobs"] = scored.logprobs.tolist()
report["options_repr"] = repr(options) + str(options)
stalled = TGIBackend(TGIOptions(
    url=args["stall_url"], model_path=args["model"], token=args["token"], timeout_s=0.5
))
began = time.monotonic()
(failed,) = stalled.score([task])
report["stalled"] = {"error": type(failed).__name__, "seconds": time.monotonic() - began}
report["bad_timeouts"] = []
for bad in (0, -1.0):
    try:
        TGIOptions(url=args["url"], model_path=args["model"], timeout_s=bad)
    except ValidationError as exc:
        report["bad_timeouts"].append(exc.errors()[0]["loc"][0])
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def guarded_teacher(
    tiny_llama_dir: Path, make_hf_config, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerHandle]:
    """An hf teacher whose TGI routes take only the job token TOKEN.

    No `allow: [score]`: the backend asks TGI for one new token per scored sequence, which a
    tropd endpoint counts as a generate call.
    """
    tokens = tmp_path_factory.mktemp("auth") / "tokens.yaml"
    tokens.write_text(f"jobs:\n  - {{name: tgi-teacher, token: {TOKEN}}}\n")
    torch.set_num_threads(1)
    handle = start_server(make_hf_config(tiny_llama_dir, tokens_file=str(tokens)))
    yield handle
    handle.stop(grace_s=5.0)


class _Recorder(BaseHTTPRequestHandler):
    """Answers GET /info with `info` and stalls POST for STALL_S; records Authorization."""

    info: bytes = b"{}"
    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.info)))
        self.end_headers()
        self.wfile.write(self.info)

    def do_POST(self) -> None:  # noqa: N802
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        time.sleep(STALL_S)
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def recorder(guarded_teacher: ServerHandle) -> Iterator[tuple[type[_Recorder], str]]:
    request = urllib.request.Request(
        guarded_teacher.http_url + "/info", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        info = response.read()
    handler = type("Recorder", (_Recorder,), {"info": info, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


def test_token_reaches_tgi_as_a_bearer_header_and_the_timeout_applies(
    guarded_teacher: ServerHandle,
    recorder: tuple[type[_Recorder], str],
    tiny_llama_dir: Path,
    tgi_python: Path,
) -> None:
    handler, stall_url = recorder
    ids = TextTokenizer(tiny_llama_dir).encode(PROMPT).ids
    args = {"url": guarded_teacher.http_url, "stall_url": stall_url, "model": str(tiny_llama_dir),
            "token": TOKEN, "ids": ids}  # fmt: skip
    run = subprocess.run(
        [str(tgi_python), "-c", BACKEND_SCRIPT],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    # Without the token the guarded endpoint refuses /info; with it, warm-up and scoring pass.
    assert report["without_token"].startswith("Unavailable")
    assert "401" in report["without_token"] and "TEACHER_TGI_TOKEN" in report["without_token"]
    with TeacherClient(guarded_teacher.target, token=TOKEN) as hf:
        (expect,) = hf.score([ids], 1)
    np.testing.assert_allclose(report["logprobs"], expect.logprobs, atol=1e-5)
    assert TOKEN not in report["options_repr"] + run.stderr
    # Both the /info read and the scoring request carried the header.
    assert {path for path, _ in handler.seen} == {"/info", "/"}
    assert {auth for _, auth in handler.seen} == {f"Bearer {TOKEN}"}
    # timeout_s=0.5: the stalled request fails UNAVAILABLE long before the server answers.
    assert report["stalled"]["error"] == "Unavailable"
    assert report["stalled"]["seconds"] < STALL_S - 2
    assert report["bad_timeouts"] == ["timeout_s", "timeout_s"]


def test_server_settings_take_the_token_from_the_environment_and_mask_it() -> None:
    base = {"TEACHER_MODEL": "/tok", "TEACHER_BACKEND": "tgi", "TEACHER_TGI_URL": "http://tgi"}
    config = load_config(
        environ={**base, "TEACHER_TGI_TOKEN": TOKEN, "TEACHER_TGI_TIMEOUT_S": "2.5"}
    )
    assert config.tgi_token is not None and config.tgi_token.get_secret_value() == TOKEN
    assert config.tgi_timeout_s == 2.5
    assert TOKEN not in config.to_json() + repr(config) + str(config)
    assert json.loads(config.to_json())["tgi_token"] == "**********"
    unset = load_config(environ={**base, "TEACHER_TGI_TOKEN": ""})
    assert unset.tgi_token is None and unset.tgi_timeout_s == 60.0
    for bad in ("0", "-3"):
        with pytest.raises(ConfigError, match="tgi_timeout_s: Input should be greater than 0"):
            load_config(environ={**base, "TEACHER_TGI_TIMEOUT_S": bad})


def test_server_hands_token_and_timeout_to_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    import tropd.teacher.backends
    from tropd.teacher import server

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        tropd.teacher.backends, "load_backend", lambda *a, **kw: calls.append((a, kw))
    )
    config = load_config(
        environ={"TEACHER_MODEL": "/tok", "TEACHER_BACKEND": "tgi", "TEACHER_TGI_URL": "http://tgi",
                 "TEACHER_TGI_TOKEN": TOKEN, "TEACHER_TGI_TIMEOUT_S": "7.5"}
    )  # fmt: skip
    server._load_backend(config)
    ((args, options),) = calls
    assert args == ("tgi",)
    assert options["token"].get_secret_value() == TOKEN
    assert options["timeout_s"] == 7.5


def test_tgi_teacher_behind_a_token_serves_and_never_prints_it(
    guarded_teacher: ServerHandle, tiny_llama_dir: Path, tgi_teacher_factory
) -> None:
    tgi = tgi_teacher_factory(
        guarded_teacher.http_url,
        tiny_llama_dir,
        "--tgi-timeout-s",
        "30",
        env={"TEACHER_TGI_TOKEN": TOKEN},
    )
    assert TOKEN not in "".join(tgi.startup_output)
    ids = TextTokenizer(tiny_llama_dir).encode(PROMPT).ids
    with TeacherClient(tgi.target, timeout=60) as via_tgi:
        (scored,) = via_tgi.score([ids], 1)
    assert np.isfinite(scored.logprobs).all()
