"""gRPC over TLS and mutual TLS, with certificates generated here (a CA, a server certificate
for localhost, a client certificate, and an unrelated CA's client certificate)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tropd.errors import ConfigError
from tropd.teacher.cli import main as cli_main
from tropd.teacher.client import TeacherClient, TeacherRpcError
from tropd.teacher.config import load_config
from tropd.teacher.server import start_server


@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert, key), key, cert


def make_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, server: bool
) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _pem(builder.sign(ca_key, hashes.SHA256()), key)


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    return Pem(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    stranger: Pem  # a client certificate from an unrelated CA
    dir: Path

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, ca_key, ca_cert = make_ca("tropd test CA")
    _, other_key, other_cert = make_ca("someone else's CA")
    return Pki(
        ca=ca,
        server=make_leaf(ca_key, ca_cert, "localhost", server=True),
        client=make_leaf(ca_key, ca_cert, "student-a", server=False),
        stranger=make_leaf(other_key, other_cert, "intruder", server=False),
        dir=tmp_path_factory.mktemp("pki"),
    )


def tls_config(make_config, model_dir: Path, pki: Pki, mutual: bool):
    files = {
        "tls_cert_file": pki.write("server.pem", pki.server.cert),
        "tls_key_file": pki.write("server.key", pki.server.key),
    }
    if mutual:
        files["tls_client_ca_file"] = pki.write("ca.pem", pki.ca.cert)
    return make_config(model_dir, **files)


def info_or_code(target: str, credentials: grpc.ChannelCredentials | None) -> object:
    with TeacherClient(target, timeout=10, max_retries=0, credentials=credentials) as client:
        try:
            return client.info()
        except TeacherRpcError as exc:
            return exc.code


def localhost(handle) -> str:
    return f"localhost:{handle.grpc_port}"  # the name the server certificate holds


def test_tls_handshake_and_plaintext_refused(tiny_llama_dir, pki, make_config) -> None:
    with start_server(tls_config(make_config, tiny_llama_dir, pki, mutual=False)) as handle:
        trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
        assert info_or_code(localhost(handle), trusted).vocab_size > 0
        assert info_or_code(localhost(handle), None) == grpc.StatusCode.UNAVAILABLE
        untrusting = grpc.ssl_channel_credentials(root_certificates=pki.stranger.cert)
        assert info_or_code(localhost(handle), untrusting) == grpc.StatusCode.UNAVAILABLE
        # The server keeps serving after failed handshakes.
        assert info_or_code(localhost(handle), trusted).vocab_size > 0


def test_cli_health_and_info_over_tls(tiny_llama_dir, pki, make_config, capsys) -> None:
    with start_server(tls_config(make_config, tiny_llama_dir, pki, mutual=True)) as handle:
        tls = [
            "--tls-ca-file", pki.write("ca.pem", pki.ca.cert),
            "--tls-cert-file", pki.write("client.pem", pki.client.cert),
            "--tls-key-file", pki.write("client.key", pki.client.key),
        ]  # fmt: skip
        target = ["--target", localhost(handle)]
        assert cli_main(["health", *target, *tls]) == 0
        assert cli_main(["info", *target, *tls]) == 0
        assert cli_main(["health", *target, "--timeout", "2"]) == 1  # plaintext is refused
        assert cli_main(["info", *target, *tls[:2], "--tls-cert-file", "x.pem"]) == 2
    assert "SERVING" in capsys.readouterr().out


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    tiny_llama_dir, pki, make_config
) -> None:
    with start_server(tls_config(make_config, tiny_llama_dir, pki, mutual=True)) as handle:
        target = localhost(handle)
        good = grpc.ssl_channel_credentials(pki.ca.cert, pki.client.key, pki.client.cert)
        assert info_or_code(target, good).vocab_size > 0
        no_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
        assert info_or_code(target, no_cert) == grpc.StatusCode.UNAVAILABLE
        foreign = grpc.ssl_channel_credentials(pki.ca.cert, pki.stranger.key, pki.stranger.cert)
        assert info_or_code(target, foreign) == grpc.StatusCode.UNAVAILABLE
        assert info_or_code(target, good).vocab_size > 0


def test_tls_config_must_pair_cert_and_key() -> None:
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        load_config({"model": "m", "tls_cert_file": "server.pem"}, environ={})
    with pytest.raises(ConfigError, match="needs tls_cert_file"):
        load_config({"model": "m", "tls_client_ca_file": "ca.pem"}, environ={})
    env = {"TEACHER_TLS_CERT_FILE": "c.pem", "TEACHER_TLS_KEY_FILE": "k.pem"}
    assert load_config({"model": "m"}, environ=env).tls_key_file == "k.pem"


def test_unreadable_certificate_fails_start_naming_the_file(
    tiny_llama_dir, tmp_path, make_config
) -> None:
    config = make_config(
        tiny_llama_dir, tls_cert_file=str(tmp_path / "missing.pem"), tls_key_file="k.pem"
    )
    with pytest.raises(RuntimeError, match="tls_cert_file .*missing.pem"):
        start_server(config)


def test_http_port_serves_tls_with_the_grpc_certificate(tiny_llama_dir, pki, make_config) -> None:
    context = ssl.create_default_context(cadata=pki.ca.cert.decode())
    with start_server(tls_config(make_config, tiny_llama_dir, pki, mutual=True)) as handle:
        assert handle.http_url.startswith("https://")
        url = f"https://localhost:{handle.http_port}"
        # Probes and Prometheus hold no client certificate: HTTP asks for none.
        assert httpx.get(f"{url}/livez", verify=context).status_code == 200
        with pytest.raises(httpx.HTTPError):  # plaintext (and with it tokens in the clear)
            httpx.get(f"http://127.0.0.1:{handle.http_port}/livez")


def test_plaintext_http_beside_tls_refuses_tokens(tiny_llama_dir, pki, make_config) -> None:
    config = tls_config(make_config, tiny_llama_dir, pki, mutual=False)
    with start_server(config.model_copy(update={"http_plaintext": True})) as handle:
        assert handle.http_url.startswith("http://")
        assert httpx.get(f"{handle.http_url}/livez").status_code == 200
        bearer = {"authorization": "Bearer some-job-token-0123456789"}
        refused = httpx.get(f"{handle.http_url}/v1/jobs", headers=bearer)
        assert refused.status_code == 403 and "plaintext" in refused.json()["error"]
