"""The replicas behind a teacher target: which addresses a gRPC target names.

A target is one address (`host:port`), an address list (`ipv4:a:p,b:p`, `ipv6:[..]:p,..`), or a
DNS name (`dns:///name:port`, a Kubernetes headless Service: one A record per ready pod). gRPC
resolves and balances them itself (`TeacherClient`); the trainer resolves them once more here,
with the stdlib, to size how many Score requests a step sends at once.
"""

from __future__ import annotations

import socket


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def replica_addresses(target: str) -> list[str]:
    """Every `host:port` a target names, in order, duplicates dropped.

    Args:
        target: `host:port`, `dns:///host:port` (resolved now; `dns://authority/host:port` too),
            or `ipv4:`/`ipv6:` followed by a comma-separated address list.
    Returns:
        The addresses (IPv6 hosts in brackets); a plain `host:port` comes back as given.
    Raises:
        ValueError: a malformed target, or a DNS name that does not resolve (the message says so).
    """
    if target.startswith(("ipv4:", "ipv6:")):
        listed = [a.strip() for a in target.split(":", 1)[1].split(",") if a.strip()]
        for address in listed:
            _split_host_port(address)
        return list(dict.fromkeys(listed))
    if target.startswith("dns:"):
        name = target.removeprefix("dns:").lstrip("/")
        name = name.split("/", 1)[1] if target.startswith("dns://") and "/" in name else name
        host, port = _split_host_port(name)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ValueError(f"cannot resolve {host!r} of {target!r}: {exc.strerror}") from None
        found = [
            f"[{info[4][0]}]:{port}" if info[0] == socket.AF_INET6 else f"{info[4][0]}:{port}"
            for info in infos
        ]
        return list(dict.fromkeys(found))
    _split_host_port(target)
    return [target]
