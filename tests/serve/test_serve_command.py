"""`hlip serve` as a command: refusals in one line before anything loads, and TLS from uvicorn's options
(a real server with a self-signed certificate, and the client trusting exactly that certificate)."""
from __future__ import annotations

import datetime
import ipaddress

import pytest

from hlip_engine.cli import main as hlip


def test_serve_refuses_to_start_without_a_usable_token(library, demo_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HLIP_TOKEN", raising=False)
    base = ["serve", "--model", str(demo_checkpoint), "--index", str(library["index"])]
    assert hlip(base) == 2
    assert "no token" in capsys.readouterr().err
    monkeypatch.setenv("HLIP_TOKEN", "short")
    assert hlip(base) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert hlip([*base, "--token-file", str(tmp_path / "missing")]) == 2
    assert "token file not found" in capsys.readouterr().err
    monkeypatch.setenv("HLIP_TOKEN", "a-long-enough-token-for-this")
    assert hlip(["serve", "--model", str(demo_checkpoint), "--index", str(tmp_path / "no.index")]) == 2
    assert "index folder not found" in capsys.readouterr().err
    assert hlip([*base, "--ssl-keyfile", str(tmp_path / "k.pem")]) == 2
    assert "both --ssl-keyfile and --ssl-certfile" in capsys.readouterr().err
    assert hlip([*base, "--max-upload-mb", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-upload-mb must be at least 1" in err and "a-long-enough" not in err


def _self_signed(folder):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_file, cert_file = folder / "key.pem", folder / "cert.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def test_tls_with_uvicorns_certificate_options(server_factory, tmp_path, library):
    import urllib.request

    from hlip_engine.remote import EngineError, RemoteEngine

    key_file, cert_file = _self_signed(tmp_path)
    srv = server_factory("--ssl-keyfile", str(key_file), "--ssl-certfile", str(cert_file), name="tls",
                         scheme="https", cafile=cert_file)
    url = f"https://127.0.0.1:{srv.port}"
    client = RemoteEngine(url, srv.token, cafile=str(cert_file))
    assert client.health() == {"status": "ok"}
    assert client.search("glioma", k=2)["hits"]
    with pytest.raises(EngineError) as e:  # a client that does not trust the certificate is refused
        RemoteEngine(url, srv.token).info()
    assert e.value.kind == "down" and "CERTIFICATE_VERIFY_FAILED" in e.value.reason
    with pytest.raises(OSError):  # plain HTTP is not served
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/v1/health", timeout=5).read()
