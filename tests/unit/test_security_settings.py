"""Security settings -> aiokafka arguments: TLS context, mTLS, hostname check, SASL, MSK IAM.

PEM files are generated per test (streamer.kafka.local_tls); nothing secret is stored in the
repository. AWS MSK IAM is tested with a stand-in signer only: there is no AWS here.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamer.config import Settings
from streamer.kafka.access import tls_reason
from streamer.kafka.local_tls import CertificateAuthority
from streamer.kafka.security import (
    MskIamTokenProvider,
    SecurityConfigError,
    redact,
    security_kwargs,
)

SECRET = "s3cr3t-Pa55word-xyz"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority()
    (d / "ca.pem").write_bytes(ca.cert_pem)
    ca.issue("client").write(d / "client.pem", d / "client.key")
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key", "dir": d}


def test_plaintext_by_default() -> None:
    assert security_kwargs(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_ssl_with_a_private_ca_checks_the_hostname(pki: dict[str, Path]) -> None:
    kwargs = security_kwargs(Settings(security_protocol="SSL", ssl_cafile=pki["ca"]))
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert any(c["subject"] == ((("commonName", "streamer-test-ca"),),) for c in ctx.get_ca_certs())


def test_hostname_check_can_be_turned_off_but_the_chain_is_still_verified(pki) -> None:
    s = Settings(security_protocol="SSL", ssl_cafile=pki["ca"], ssl_check_hostname=False)
    ctx = security_kwargs(s)["ssl_context"]
    assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_mtls_client_certificate_loads(pki: dict[str, Path]) -> None:
    s = Settings(
        security_protocol="SSL", ssl_cafile=pki["ca"], ssl_certfile=pki["cert"],
        ssl_keyfile=pki["key"],
    )  # fmt: skip
    assert isinstance(security_kwargs(s)["ssl_context"], ssl.SSLContext)


def test_a_key_that_does_not_match_is_a_clear_error_without_the_password(pki) -> None:
    other = pki["dir"] / "other.key"
    CertificateAuthority().issue("x").write(pki["dir"] / "other.pem", other)
    s = Settings(
        security_protocol="SSL", ssl_certfile=pki["cert"], ssl_keyfile=other,
        ssl_key_password=SECRET,
    )  # fmt: skip
    with pytest.raises(SecurityConfigError, match="ssl_certfile/ssl_keyfile") as err:
        security_kwargs(s)
    assert SECRET not in str(err.value)


def test_scram_arguments() -> None:
    s = Settings(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="svc",
        sasl_password=SECRET,
    )  # fmt: skip
    kwargs = security_kwargs(s)
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "svc" and kwargs["sasl_plain_password"] == SECRET
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)  # system CAs
    assert SECRET not in repr(s) and SECRET not in str(s.public_dict())
    assert s.secrets() == [SECRET]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": SECRET},
         "needs security_protocol SASL"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
         "needs sasl_username and sasl_password"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "AWS_MSK_IAM"}, "aws_region"),
        ({"ssl_cafile": "/etc/hostname"}, "needs security_protocol SSL"),
        ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "no such file"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/etc/hostname"}, "need ssl_certfile"),
    ],
)  # fmt: skip
def test_settings_that_cannot_work_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        Settings(**settings)
    for e in err.value.errors(include_input=False):
        assert SECRET not in str(e["msg"])


def test_msk_iam_uses_oauthbearer_with_a_token_provider(monkeypatch) -> None:
    import streamer.kafka.security as security

    monkeypatch.setattr(security, "_msk_signer", lambda: lambda region: (f"tok-{region}", 0))
    s = Settings(security_protocol="SASL_SSL", sasl_mechanism="AWS_MSK_IAM", aws_region="eu-west-1")
    kwargs = security_kwargs(s)
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    assert isinstance(kwargs["sasl_oauth_token_provider"], MskIamTokenProvider)
    assert "sasl_plain_password" not in kwargs


def test_msk_token_is_reused_until_a_minute_before_expiry() -> None:
    calls: list[str] = []
    now = [1000.0]

    def sign(region: str) -> tuple[str, int]:
        calls.append(region)
        return f"token-{len(calls)}", int((now[0] + 900) * 1000)  # 15 min, as MSK's

    provider = MskIamTokenProvider("us-east-1", sign=sign, clock=lambda: now[0])

    async def tokens() -> list[str]:
        out = [await provider.token(), await provider.token()]
        now[0] += 900 - 59  # inside the last minute: sign anew
        out.append(await provider.token())
        return out

    assert asyncio.run(tokens()) == ["token-1", "token-1", "token-2"]
    assert calls == ["us-east-1", "us-east-1"]


def test_msk_without_the_extra_says_how_to_install(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_signer(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("aws_msk_iam_sasl_signer"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_signer)
    with pytest.raises(SecurityConfigError, match=r"streamer\[msk\]"):
        MskIamTokenProvider("us-east-1")


def test_redact_and_tls_reasons() -> None:
    assert redact(f"x {SECRET} y {SECRET}", [SECRET, ""]) == "x *** y ***"
    assert "renew" in tls_reason("certificate has expired", "h")
    assert "ssl_cafile" in tls_reason("unable to get local issuer certificate", "h")
    assert "ssl_check_hostname" in tls_reason("Hostname mismatch, certificate is not valid", "h")


def test_commands_take_the_services_settings(monkeypatch, pki, tmp_path, capsys) -> None:
    """`streamer topics|produce|tail|replay|bench` connect with `command_settings` +
    `client_kwargs`, the service's recipe: STREAMER_* and --config; invalid ones stop them."""
    from streamer.kafka.clients import client_kwargs, command_settings

    monkeypatch.delenv("STREAMER_SECURITY_PROTOCOL", raising=False)
    settings = command_settings("streamer tail", bootstrap_servers="b:1")
    assert settings is not None
    assert client_kwargs(settings)["security_protocol"] == "PLAINTEXT"
    assert client_kwargs(settings)["bootstrap_servers"] == "b:1"
    for key, value in {
        "STREAMER_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMER_SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMER_SASL_USERNAME": "reader",
        "STREAMER_SASL_PASSWORD": SECRET,
    }.items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "streamer.toml"
    config.write_text(f'ssl_cafile = "{pki["ca"]}"\n')
    settings = command_settings("streamer tail", config)
    assert settings is not None
    kwargs = client_kwargs(settings)
    assert kwargs["sasl_plain_username"] == "reader" and isinstance(
        kwargs["ssl_context"], ssl.SSLContext
    )
    monkeypatch.delenv("STREAMER_SASL_PASSWORD")
    assert command_settings("streamer tail", config) is None
    err = capsys.readouterr().err
    assert "streamer tail: invalid setting" in err and "sasl_username and sasl_password" in err
