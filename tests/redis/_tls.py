"""Throw-away certificates for the TLS tests, made with the ``openssl`` command.

:func:`make_pki` writes into a directory: a CA and, signed by it, a server
certificate for 127.0.0.1/localhost, a client certificate, an expired server
certificate and one for another host name; plus a second CA with a server
certificate of its own (a "rotation" to a CA the clients do not trust).
Every key is RSA 2048, unencrypted except ``client_enc_key`` (password
:data:`KEY_PASSWORD`).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["KEY_PASSWORD", "Pki", "make_pki", "openssl_binary", "tls_query"]

KEY_PASSWORD = "k3y-s3cret-pw"


def openssl_binary() -> str:
    path = shutil.which("openssl") or "/usr/bin/openssl"
    if not Path(path).exists():  # pragma: no cover - the machine has it
        raise RuntimeError("the TLS tests need the openssl command")
    return path


@dataclass(frozen=True)
class Pki:
    """Paths of the files :func:`make_pki` wrote."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_enc_key: Path
    expired_cert: Path
    expired_key: Path
    wrong_host_cert: Path
    wrong_host_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [openssl_binary(), *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr}")


def _ca(d: Path, name: str) -> None:
    _run(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "30",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, ca: str, name: str, san: str, usage: str, *, expired: bool = False) -> None:
    """``name``.pem/.key signed by ``ca`` (``openssl ca`` for explicit dates when ``expired``)."""
    _run(
        "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr",
        cwd=d,
    )  # fmt: skip
    ext = d / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else "")
    )
    if not expired:
        _run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "30", "-sha256", "-extfile", ext.name,
            "-out", f"{name}.pem",
            cwd=d,
        )  # fmt: skip
        return
    # x509 -req cannot set dates in the past (OpenSSL 3.0): a minimal `openssl ca`.
    db = d / f"{name}.db"
    db.mkdir()
    (db / "index.txt").write_text("")
    (db / "serial").write_text("1000\n")
    conf = d / f"{name}.cnf"
    conf.write_text(
        "[ca]\ndefault_ca=c\n[c]\n"
        f"dir={db}\ndatabase=$dir/index.txt\nserial=$dir/serial\nnew_certs_dir=$dir\n"
        "default_md=sha256\npolicy=p\ncopy_extensions=none\n[p]\ncommonName=supplied\n"
    )
    _run(
        "ca", "-batch", "-config", conf.name, "-cert", f"{ca}.pem", "-keyfile", f"{ca}.key",
        "-in", f"{name}.csr", "-out", f"{name}.pem", "-extfile", ext.name, "-notext",
        "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
        cwd=d,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    """Write the certificates of :class:`Pki` into ``directory`` (created if missing)."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    here = "IP:127.0.0.1,DNS:localhost"
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "ca", "server", here, "serverAuth")
    _leaf(d, "ca", "client", "", "clientAuth")
    _leaf(d, "ca", "expired", here, "serverAuth", expired=True)
    _leaf(d, "ca", "wrong-host", "DNS:cache.example.invalid", "serverAuth")
    _leaf(d, "other-ca", "other", here, "serverAuth")
    _run(
        "pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}",
        "-out", "client-enc.key",
        cwd=d,
    )  # fmt: skip
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        client_enc_key=d / "client-enc.key",
        expired_cert=d / "expired.pem",
        expired_key=d / "expired.key",
        wrong_host_cert=d / "wrong-host.pem",
        wrong_host_key=d / "wrong-host.key",
        other_ca=d / "other-ca.pem",
        other_cert=d / "other.pem",
        other_key=d / "other.key",
    )


def tls_query(
    ca: Path | None = None, *, cert: Path | None = None, key: Path | None = None, **more: str
) -> str:
    """``?ssl_ca_certs=...&...``: the TLS options of a ``rediss://`` URL (paths quoted)."""
    items: list[tuple[str, str]] = []
    if ca is not None:
        items.append(("ssl_ca_certs", str(ca)))
    if cert is not None:
        items.append(("ssl_certfile", str(cert)))
    if key is not None:
        items.append(("ssl_keyfile", str(key)))
    items.extend(more.items())
    if not items:
        return ""
    return "?" + "&".join(f"{k}={quote(v, safe='/')}" for k, v in items)
