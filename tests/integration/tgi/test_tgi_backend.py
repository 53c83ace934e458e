"""The `tgi` backend end to end: a tropd teacher with backend=tgi (in .venv-tgi, through the
real `text-generation` client) in front of a TGI-speaking server, checked over gRPC.

The TGI side is our own hf teacher's TGI-compatible routes (no real TGI server runs here), so
the `tgi` teacher's log-probs must equal the hf teacher's own. Error statuses are produced by a
small loopback proxy that answers like TGI does when it refuses. With TGI_URL (and
TGI_TOKENIZER, the folder of that server's tokenizer files, or of its whole checkpoint for a
comparison with a float32 forward here) set, the round-trip and scoring checks run against a
real TGI server.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from tropd.teacher.client import TeacherClient
from tropd.teacher.client_codec import TeacherRpcError
from tropd.teacher.server import ServerHandle, start_server
from tropd.teacher.text_tokenizer import TextTokenizer

TEXTS = (
    "the answer is the sum of the first digit",
    "step one: add the last digit, then carry",
    "so the number is 42 and 7",
)
# TGI's error bodies (router/src/server.rs): status -> error_type.
TGI_ERRORS = {422: "validation", 429: "overloaded", 424: "generation", 500: "incomplete_generation",
              503: "unavailable"}  # fmt: skip


@pytest.fixture(scope="module")
def hf_teacher(tiny_llama_dir: Path, make_hf_config) -> Iterator[ServerHandle]:
    torch.set_num_threads(1)
    handle = start_server(make_hf_config(tiny_llama_dir))
    yield handle
    handle.stop(grace_s=5.0)


def _ids(tokenizer_dir: Path) -> list[list[int]]:
    tok = TextTokenizer(tokenizer_dir)
    return [tok.encode(text).ids for text in TEXTS]


def test_tgi_teacher_scores_like_the_hf_teacher(
    hf_teacher: ServerHandle, tiny_llama_dir: Path, tgi_teacher_factory
) -> None:
    tgi = tgi_teacher_factory(hf_teacher.http_url, tiny_llama_dir)
    sequences = _ids(tiny_llama_dir)
    starts = [1, 3, len(sequences[2]) - 2]
    with TeacherClient(tgi.target, timeout=60) as via_tgi, TeacherClient(hf_teacher.target) as hf:
        info, hf_info = via_tgi.info(), hf.info()
        assert info.backend == "tgi"
        assert info.fingerprint == hf_info.fingerprint
        caps = info.capabilities
        assert caps.score and not (caps.top_k or caps.candidates or caps.generate)
        assert info.limits.max_sequence_length == hf_info.limits.max_sequence_length - 1
        got = via_tgi.score(sequences, starts)
        expect = hf.score(sequences, starts)
        for g, e in zip(got, expect, strict=True):
            np.testing.assert_allclose(g.logprobs, e.logprobs, atol=1e-5)
        with pytest.raises(TeacherRpcError) as refused:
            via_tgi.score(sequences[:1], 1, top_k=4)
        assert refused.value.code == grpc.StatusCode.UNIMPLEMENTED


def test_ids_that_do_not_round_trip_are_refused(
    hf_teacher: ServerHandle, tiny_llama_dir: Path, tgi_teacher_factory
) -> None:
    tok = TextTokenizer(tiny_llama_dir)
    tgi = tgi_teacher_factory(hf_teacher.http_url, tiny_llama_dir)
    # " answer" spelled letter by letter: the same text, but not the ids TGI will produce.
    canonical = tok.encode("the answer").ids
    spelled = canonical[:3] + [tok.encode(c).ids[0] for c in " answer"]
    assert tok.decode(spelled) == tok.decode(canonical) and spelled != canonical
    client = TeacherClient(tgi.target, timeout=60, max_retries=0)
    with client, pytest.raises(TeacherRpcError) as refused:
        client.score([spelled], 1)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "differently at position 3" in refused.value.details


def test_a_refused_sequence_fails_alone(
    hf_teacher: ServerHandle, tiny_llama_dir: Path, tgi_teacher_factory
) -> None:
    tok = TextTokenizer(tiny_llama_dir)
    # A long delay cap: the two callers' sequences share one batch.
    tgi = tgi_teacher_factory(hf_teacher.http_url, tiny_llama_dir, "--max-delay-ms", "300")
    canonical = tok.encode("the answer").ids
    spelled = canonical[:3] + [tok.encode(c).ids[0] for c in " answer"]
    with (
        TeacherClient(tgi.target, timeout=60, max_retries=0) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        good = pool.submit(client.score, [canonical], 1)
        bad = pool.submit(client.score, [spelled], 1)
        assert len(good.result()[0].logprobs) == len(canonical) - 1
        with pytest.raises(TeacherRpcError) as refused:
            bad.result()
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{tgi.http_port}/metrics", timeout=10)
    forwards = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.read().decode().splitlines()
        if line.startswith("teacher_forward_seconds_count") and 'kind="score"' in line
    ]
    assert sum(forwards) == 1  # both sequences went to the backend in one batch


def test_a_mismatched_tokenizer_is_caught_at_start(
    hf_teacher: ServerHandle, tgi_teacher_factory
) -> None:
    world_teacher = Path(__file__).resolve().parents[3] / "worlds" / "builtin" / "teacher"
    with pytest.raises(RuntimeError, match="tokenised the sequence differently at position"):
        tgi_teacher_factory(hf_teacher.http_url, world_teacher)


class _Proxy(BaseHTTPRequestHandler):
    """Forwards to the upstream TGI routes, or answers like a TGI that refuses (`mode`)."""

    upstream = ""
    mode: str | int = "ok"

    def _forward(self, body: bytes | None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.upstream + self.path, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
        self._send(*self._forward(None))

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        mode = type(self).mode
        if isinstance(mode, int):
            error = {"error": f"refused with {mode}", "error_type": TGI_ERRORS[mode]}
            self._send(mode, json.dumps(error).encode())
            return
        status, payload = self._forward(body)
        if mode == "no_prefill":  # what TGI >= 3.0 sends without --enable-prefill-logprobs
            answer = json.loads(payload)
            answer[0]["details"]["prefill"] = []
            payload = json.dumps(answer).encode()
        self._send(status, payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def proxy(hf_teacher: ServerHandle) -> Iterator[type[_Proxy]]:
    handler = type("Proxy", (_Proxy,), {"upstream": hf_teacher.http_url, "mode": "ok"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    thread.join(timeout=10)


@pytest.mark.parametrize(
    ("mode", "code", "words"),
    [
        ("no_prefill", grpc.StatusCode.FAILED_PRECONDITION, "--enable-prefill-logprobs"),
        (422, grpc.StatusCode.INVALID_ARGUMENT, "refused with 422"),
        (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded"),
        (424, grpc.StatusCode.INTERNAL, "refused with 424"),
        (500, grpc.StatusCode.INTERNAL, "refused with 500"),
        (503, grpc.StatusCode.UNAVAILABLE, "unavailable"),
    ],
)
def test_tgi_errors_map_to_grpc_statuses(
    proxy: type[_Proxy], tiny_llama_dir: Path, tgi_teacher_factory, mode, code, words
) -> None:
    tgi = tgi_teacher_factory(proxy.url, tiny_llama_dir)  # type: ignore[attr-defined]
    proxy.mode = mode
    client = TeacherClient(tgi.target, timeout=30, max_retries=0)
    with client, pytest.raises(TeacherRpcError) as refused:
        client.score(_ids(tiny_llama_dir)[:1], 1)
    assert refused.value.code == code
    assert words in refused.value.details


@pytest.mark.skipif(not os.environ.get("TGI_URL"), reason="set TGI_URL (and TGI_TOKENIZER)")
def test_against_a_real_tgi_server(tgi_teacher_factory) -> None:
    tokenizer_dir = Path(os.environ["TGI_TOKENIZER"])
    tgi = tgi_teacher_factory(os.environ["TGI_URL"], tokenizer_dir)
    tok = TextTokenizer(tokenizer_dir)
    sequences = [list(tok.added_prefix) + tok.encode(t, add_special_tokens=False).ids
                 for t in TEXTS]  # fmt: skip
    with TeacherClient(tgi.target, timeout=120) as client:
        assert client.info().backend == "tgi"
        for scored in client.score(sequences, 1):
            assert np.all(np.isfinite(scored.logprobs)) and np.all(scored.logprobs <= 0)
        if (tokenizer_dir / "config.json").is_file():
            # The folder is the whole checkpoint: compare with a float32 forward on this CPU.
            # TGI computes in its own dtype (bf16/fp16 on GPU), hence the loose tolerance.
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(tokenizer_dir, dtype=torch.float32)
            for ids, scored in zip(sequences, client.score(sequences, 1), strict=True):
                with torch.inference_mode():
                    logits = model(torch.as_tensor([ids])).logits[0].float()
                ref = torch.log_softmax(logits, -1)[torch.arange(len(ids) - 1), ids[1:]]
                np.testing.assert_allclose(scored.logprobs, ref.numpy(), atol=0.15)
        spelled = sequences[0][:1] + [tok.encode(c, add_special_tokens=False).ids[0]
                                      for c in TEXTS[0]]  # fmt: skip
        if spelled != sequences[0]:
            with pytest.raises(TeacherRpcError) as refused:
                client.score([spelled], 1)
            assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
