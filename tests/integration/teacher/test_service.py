"""The real service end to end: a tiny real model served on loopback, talked to by the client.

Scores are checked against an independent float32 computation (full softmax from the model's
own logits) and must not depend on what else shared the batch.
"""

from __future__ import annotations

import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tropd.teacher.client import TeacherClient, TeacherRpcError, TokenizerMismatch
from tropd.teacher.fingerprint import TokenizerFingerprint

TOL = 1e-4


def random_ids(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    return rng.integers(4, vocab, size=n, dtype=np.int32)


def check_against_reference(row, ref_V, ids, start, end, top_k) -> None:
    expected = ref_V[np.arange(end - start), ids[start:end]]
    np.testing.assert_allclose(row.logprobs, expected, atol=TOL, rtol=0)
    if top_k:
        np.testing.assert_allclose(
            row.topk_logprobs, -np.sort(-ref_V, axis=-1)[:, :top_k], atol=TOL, rtol=0
        )
        gathered = np.take_along_axis(ref_V, row.topk_ids.astype(np.int64), axis=-1)
        np.testing.assert_allclose(gathered, row.topk_logprobs, atol=TOL, rtol=0)


@pytest.mark.parametrize(("n", "start", "end"), [(2, 1, 0), (9, 1, 0), (33, 20, 0), (64, 7, 41)])
def test_scores_match_float32_reference(client, llama_reference, n, start, end) -> None:
    info = client.info()
    rng = np.random.default_rng(n)
    ids = random_ids(rng, n, info.fingerprint.vocab_size)
    stop = end or n
    cands = rng.integers(0, info.vocab_size, size=(stop - start, 5), dtype=np.int32)
    (row,) = client.score(
        [ids], start, end or None, top_k=8, candidates=[cands],
        extras=("logsumexp", "entropy", "rank"),
    )  # fmt: skip
    ref_V = llama_reference.span(ids, start, stop)
    check_against_reference(row, ref_V, ids, start, stop, top_k=8)
    np.testing.assert_allclose(
        row.candidate_logprobs, np.take_along_axis(ref_V, cands, axis=-1), atol=TOL, rtol=0
    )
    p_V = np.exp(ref_V.astype(np.float64))
    np.testing.assert_allclose(row.entropy, -(p_V * ref_V).sum(-1), atol=TOL, rtol=0)
    own = ref_V[np.arange(stop - start), ids[start:stop]]
    np.testing.assert_array_equal(row.rank, (ref_V > own[:, None]).sum(-1))
    assert row.logsumexp.shape == (stop - start,) and np.isfinite(row.logsumexp).all()


def test_float16_logprobs_on_request(client, llama_reference) -> None:
    ids = np.arange(4, 20, dtype=np.int32)
    (row,) = client.score([ids], 3, top_k=4, logprob_dtype="float16")
    assert row.logprobs.dtype == np.float16 and row.topk_logprobs.dtype == np.float16
    ref = llama_reference.span(ids, 3, 16)[np.arange(13), ids[3:]]
    np.testing.assert_allclose(row.logprobs.astype(np.float32), ref, atol=2e-2)


def test_scores_do_not_depend_on_batch_mates(llama_server, client) -> None:
    vocab = client.info().fingerprint.vocab_size
    rng = np.random.default_rng(0)
    ids = random_ids(rng, 40, vocab)
    (alone,) = client.score([ids], 5, top_k=6)
    others = [[random_ids(rng, int(rng.integers(3, 120)), vocab)] for _ in range(7)]
    barrier = threading.Barrier(8)

    def call(seqs, start):
        with TeacherClient(llama_server.target) as c:
            barrier.wait()
            return c.score(seqs, start, top_k=6)

    with ThreadPoolExecutor(8) as pool:
        mates = [pool.submit(call, seqs, 1) for seqs in others]
        (together,) = call([ids], 5)
        for future in mates:
            future.result()
    np.testing.assert_allclose(together.logprobs, alone.logprobs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(together.topk_logprobs, alone.topk_logprobs, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(together.topk_ids, alone.topk_ids)


def test_sixteen_concurrent_clients(llama_server, llama_reference) -> None:
    vocab = TeacherClient(llama_server.target).info().fingerprint.vocab_size

    def worker(seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        seqs = [random_ids(rng, int(rng.integers(2, 50)), vocab) for _ in range(3)]
        with TeacherClient(llama_server.target) as c:
            rows = c.score(seqs, 1, top_k=3)
        for ids, row in zip(seqs, rows, strict=True):
            check_against_reference(row, llama_reference.span(ids, 1, len(ids)), ids, 1,
                                    len(ids), top_k=3)  # fmt: skip

    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(worker, i) for i in range(16)]:
            future.result()


def test_generation_reproducible_with_seed_and_greedy_matches_argmax(
    client, llama_reference
) -> None:
    prompts = [np.array([1, 10, 11, 12], np.int32), np.array([1, 40], np.int32)]
    first = client.generate(prompts, max_new_tokens=12, temperature=1.0, seed=1234)
    again = client.generate(prompts, max_new_tokens=12, temperature=1.0, seed=1234)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-6)
    (greedy,) = client.generate([prompts[0]], max_new_tokens=6, temperature=0.0)
    seq = list(prompts[0])
    for token, logprob in zip(greedy.ids, greedy.logprobs, strict=True):
        next_V = llama_reference.logprobs_T_V(np.array(seq))[-1]
        assert token == int(np.argmax(next_V))
        assert abs(logprob - next_V[token]) < TOL
        seq.append(int(token))
    assert greedy.finish_reason in ("length", "stop")


def test_responses_report_the_servers_timing(client) -> None:
    """Each answer says how long it queued and computed at the teacher (ScoreResponse.timing)."""
    scored = client.score([np.array([1, 10, 11, 12], np.int32)] * 3, starts=1, top_k=2)
    assert len(scored) == 3
    assert scored.timing.compute_seconds > 0 and scored.timing.queue_seconds >= 0
    generated = client.generate([np.array([1, 10], np.int32)], max_new_tokens=3, seed=0)
    assert generated.timing.compute_seconds > 0 and generated.timing.queue_seconds >= 0


def test_tokenizer_check(client) -> None:
    info = client.check_tokenizer(client.info().fingerprint)
    other = TokenizerFingerprint("0" * 64, 5, -1, -1, -1)
    with pytest.raises(TokenizerMismatch) as exc:
        client.check_tokenizer(other)
    assert info.fingerprint.sha256[:12] in str(exc.value) and "000000000000" in str(exc.value)


def test_health_readyz_info_and_metrics(llama_server, client) -> None:
    with grpc.insecure_channel(llama_server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tropd.teacher.v1.Teacher"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def get(path: str) -> str:
        with urllib.request.urlopen(llama_server.http_url + path, timeout=5) as response:
            return response.read().decode()

    assert '"ready"' in get("/readyz") and '"alive"' in get("/livez")
    assert '"max_top_k":32' in get("/v1/info").replace(" ", "")

    def score_ok() -> float:
        for line in get("/metrics").splitlines():
            if line.startswith('teacher_requests_total{method="Score",status="OK"}'):
                return float(line.split()[-1])
        return 0.0

    before = score_ok()
    for _ in range(3):
        client.score([np.array([1, 5, 6], np.int32)], 1)
    assert score_ok() == before + 3
    assert "teacher_batch_padding_ratio" in get("/metrics")


BAD = [
    ({"sequences": [], "starts": 1}, "INVALID_ARGUMENT", ["items", "empty batch"]),
    ({"sequences": [[]], "starts": 1}, "INVALID_ARGUMENT", ["items[0].ids", "empty"]),
    ({"sequences": [[1, 2], [1, 99999]], "starts": 1}, "INVALID_ARGUMENT", ["items[1].ids[1]"]),
    ({"sequences": [[1, 2, 3]], "starts": 0}, "INVALID_ARGUMENT", ["items[0].start = 0"]),
    ({"sequences": [[1, 2, 3]], "starts": 1, "ends": 9}, "INVALID_ARGUMENT", ["end = 9"]),
    ({"sequences": [[1, 2]], "starts": 1, "top_k": 33}, "INVALID_ARGUMENT", ["max_top_k = 32"]),
    (
        {"sequences": [[1, 2, 3]], "starts": 1, "candidates": [np.ones((1, 2), np.int32)]},
        "INVALID_ARGUMENT",
        ["items[0].candidates", "expected [2, C]"],
    ),
    (
        {"sequences": [[1, 2, 3]], "starts": 1, "candidates": [[[1], [77777]]]},
        "INVALID_ARGUMENT",
        ["items[0].candidates[1, 0] = 77777", "outside the vocabulary"],
    ),
    ({"sequences": [[1] * 600], "starts": 1}, "INVALID_ARGUMENT", ["max_sequence_length = 512"]),
    (
        {"sequences": [[1] * 500] * 9, "starts": 1},
        "RESOURCE_EXHAUSTED",
        ["4500 tokens", "max_request_tokens = 4096"],
    ),
]


@pytest.mark.parametrize(("kwargs", "code", "words"), BAD)
def test_bad_score_input_gets_status_and_server_keeps_serving(
    llama_server, client, llama_reference, kwargs, code, words
) -> None:
    good_ids = np.array([1, 7, 8, 9, 10], np.int32)
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(client.score, [good_ids], 1)
        with pytest.raises(TeacherRpcError) as exc:
            client.score(**kwargs)
        (row,) = good.result()
    assert exc.value.code.name == code
    for word in words:
        assert word in exc.value.details
    ref = llama_reference.span(good_ids, 1, 5)[np.arange(4), good_ids[1:]]
    np.testing.assert_allclose(row.logprobs, ref, atol=TOL)
    assert "attempt(s)" in str(exc.value) and "1 attempt" in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_new_tokens": 0}, ["max_new_tokens = 0"]),
        ({"max_new_tokens": 65}, ["max_new_tokens = 65", "64"]),
        ({"max_new_tokens": 4, "temperature": -1.0}, ["temperature = -1.0"]),
        ({"max_new_tokens": 4, "top_p": 0.0}, ["top_p = 0.0"]),
        ({"max_new_tokens": 4, "top_p": 1.5}, ["top_p = 1.5"]),
        ({"max_new_tokens": 64, "prompts": [[1] * 460]}, ["460 + max_new_tokens 64", "512"]),
        ({"max_new_tokens": 4, "prompts": []}, ["prompts", "empty batch"]),
        ({"max_new_tokens": 4, "prompts": [[1, 2], [3, 88888]]}, ["prompts[1][1] = 88888"]),
    ],
)
def test_bad_generate_input(client, kwargs, words) -> None:
    kwargs.setdefault("prompts", [[1, 2, 3]])
    with pytest.raises(TeacherRpcError) as exc:
        client.generate(**kwargs)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in exc.value.details
    assert client.score([[1, 2, 3]], 1)[0].logprobs.shape == (2,)


def test_unsupported_logprob_dtype_over_the_wire(llama_server, client) -> None:
    from tropd.wire import codec as wire
    from tropd.wire.v1 import teacher_pb2 as pb
    from tropd.wire.v1 import teacher_pb2_grpc as pb_grpc

    item = pb.ScoreItem(ids=wire.to_tensor(np.array([1, 2, 3], np.int32)), start=1)
    with grpc.insecure_channel(llama_server.target) as channel:
        stub = pb_grpc.TeacherStub(channel)
        for dtype in (pb.DTYPE_INT32, 42):
            with pytest.raises(grpc.RpcError) as exc:
                stub.Score(pb.ScoreRequest(items=[item], logprob_dtype=dtype), timeout=10)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "logprob_dtype" in exc.value.details()
    assert client.score([[1, 2, 3]], 1)[0].logprobs.dtype == np.float32
