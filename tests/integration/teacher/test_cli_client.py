"""The `tropd-teacher` CLI and the client's light footprint and retry policy."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from tropd.teacher.cli import main
from tropd.teacher.client import RetryPolicy, TeacherClient, TeacherClientError, TeacherRpcError


def test_cli_info_score_health(llama_server, tiny_llama_dir, capsys) -> None:
    target = llama_server.target
    assert main(["info", "--target", target]) == 0
    assert "max top k: 32" in capsys.readouterr().out
    assert main(["score", "--target", target, "--ids", "1,5,9,2", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["pos", "token", "log-prob", "rank"] and len(lines) == 5
    args = ["score", "--target", target, "--text", "the sum", "--tokenizer", str(tiny_llama_dir)]
    assert main(args) == 0
    assert "sum log-prob" in capsys.readouterr().out
    assert main(["health", "--target", target]) == 0
    assert capsys.readouterr().out.strip() == "SERVING"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["score", "--ids", "1,x"], ["--ids", "'1,x'"]),
        (["score", "--ids", "1,99999"], ["INVALID_ARGUMENT", "items[0].ids[1] = 99999"]),
        (["score", "--ids", "1,2", "--start", "0"], ["items[0].start = 0"]),
        (["score", "--text", "hello"], ["--text needs --tokenizer"]),
        (["score", "--ids", "1,2", "--tokenizer", "/nonexistent"], ["--tokenizer /nonexistent"]),
    ],
)
def test_cli_bad_input_exits_2(llama_server, capsys, args, words) -> None:
    assert main([*args, "--target", llama_server.target]) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err


def test_cli_serve_bad_config_exits_2(capsys) -> None:
    assert main(["serve", "--model", "m", "--port", "abc", "--max-delay-ms", "-1"]) == 2
    err = capsys.readouterr().err
    assert "port" in err and "'abc'" in err and "max_delay_ms" in err


def test_cli_serve_missing_model_folder_exits_2(tmp_path, capsys) -> None:
    missing = str(tmp_path / "no-such-model")
    assert main(["serve", "--model", missing, "--port", "0", "--http-port", "0"]) == 2
    assert f"model folder {missing} does not exist" in capsys.readouterr().err


def test_cli_health_unreachable_exits_1(capsys) -> None:
    assert main(["health", "--target", "127.0.0.1:1", "--timeout", "0.5"]) == 1
    assert "unhealthy" in capsys.readouterr().out


def test_cli_build_tiny(tmp_path, capsys) -> None:
    assert main(["build-tiny", str(tmp_path / "m"), "--arch", "gpt2"]) == 0
    assert (tmp_path / "m" / "config.json").exists()


@pytest.mark.parametrize("command", ["serve", "info", "score", "health", "build-tiny"])
def test_cli_help(command, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: tropd-teacher " + command in capsys.readouterr().out


def test_client_imports_without_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'fastapi', 'pydantic', 'prometheus_client'):\n"
        "    sys.modules[name] = None\n"
        "import tropd.teacher.client as c\n"
        "assert c.TeacherClient\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_from_env(monkeypatch) -> None:
    monkeypatch.delenv("TEACHER_TARGET", raising=False)
    with pytest.raises(TeacherClientError, match="TEACHER_TARGET"):
        TeacherClient.from_env()
    client = TeacherClient.from_env({"TEACHER_TARGET": "127.0.0.1:1", "TEACHER_TOKEN": "s3"})
    assert client.target == "127.0.0.1:1"
    assert ("authorization", "Bearer s3") in client._metadata
    client.close()


class FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def test_retry_policy() -> None:
    policy = RetryPolicy(max_retries=3, base_s=0.1, max_s=1.0)
    unavailable = FakeError(grpc.StatusCode.UNAVAILABLE)
    assert 0 <= policy.delay_s(unavailable, 0, ()) <= 0.1
    assert 0 <= policy.delay_s(unavailable, 2, ()) <= 0.4
    assert policy.delay_s(unavailable, 3, ()) is None  # retries used up
    full = FakeError(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert 2.0 <= policy.delay_s(full, 0, (("retry-after-ms", "2000"),)) <= 2.5
    assert policy.delay_s(full, 0, ()) is None  # too big, not busy: retrying cannot help
    assert policy.delay_s(FakeError(grpc.StatusCode.INVALID_ARGUMENT), 0, ()) is None


def test_unreachable_server_retries_then_fails() -> None:
    client = TeacherClient("127.0.0.1:1", timeout=5, max_retries=2)
    with client, pytest.raises(TeacherRpcError) as exc:
        client.info()
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE and "3 attempt(s)" in str(exc.value)


def test_deadline_and_token_over_the_wire(llama_server) -> None:
    with TeacherClient(llama_server.target, token="secret") as client:
        assert client.score([[1, 2, 3]], 1)[0].logprobs.shape == (2,)
        with pytest.raises(TeacherRpcError) as exc:
            client.score([[1, 2, 3] * 100] * 8, 1, timeout=1e-4)
    assert exc.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
