"""TLS and SASL for every Kafka client of the service, from Settings.

`security_kwargs(settings)` is what `streamer.kafka.clients` adds to each aiokafka client:
`security_protocol`, the SASL arguments, an `ssl_context` (aiokafka's
`create_ssl_context`: the CA file, an optional client certificate and key for mTLS, hostname
verification on unless `ssl_check_hostname=false`) and, for AWS MSK IAM, SASL/OAUTHBEARER with
`MskIamTokenProvider` (the `msk` extra; unit-tested with a stand-in signer only: no AWS here).

Errors are `SecurityConfigError` with a reason that names the setting, never a secret.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiokafka.abc import AbstractTokenProvider
from aiokafka.helpers import create_ssl_context

from streamer.config import Settings


class SecurityConfigError(ValueError):
    """TLS/SASL material that cannot be used; the message names the setting, never a secret."""


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret value replaced by '***' (for anything that leaves the process)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The client TLS context: CA, optional client certificate (mTLS), hostname check."""
    password = settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None
    try:
        context = create_ssl_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
            certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
            keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
            password=password,
        )
    except ssl.SSLError as exc:
        which = (
            "ssl_certfile/ssl_keyfile/ssl_key_password" if settings.ssl_certfile else "ssl_cafile"
        )
        reason = redact(exc.reason or exc.__class__.__name__, settings.secrets())
        raise SecurityConfigError(f"{which} could not be loaded: {reason}") from None
    except OSError as exc:
        raise SecurityConfigError(f"TLS files could not be read: {exc.strerror}") from None
    # create_ssl_context always checks the hostname; a cluster whose certificates do not name
    # the advertised hosts can turn that off (the chain is still verified).
    context.check_hostname = settings.ssl_check_hostname
    return context


class MskIamTokenProvider(AbstractTokenProvider):
    """SASL/OAUTHBEARER tokens for AWS MSK IAM, signed from the default AWS credentials chain.

    The signer (`aws_msk_iam_sasl_signer.MSKAuthTokenProvider.generate_auth_token(region)`,
    returning `(token, expiry_ms)`) is synchronous and may call AWS STS: it runs in a thread.
    A token is reused until a minute before it expires, so a reconnect storm signs once.
    """

    REFRESH_BEFORE_S = 60.0

    def __init__(
        self,
        region: str,
        sign: Callable[[str], tuple[str, int]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._region = region
        self._sign = sign or _msk_signer()
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        """A valid token (signed anew when the cached one is within a minute of expiry)."""
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self.REFRESH_BEFORE_S:
                loop = asyncio.get_running_loop()
                token, expiry_ms = await loop.run_in_executor(None, self._sign, self._region)
                self._token, self._expires_at = token, expiry_ms / 1000.0
            return self._token


def _msk_signer() -> Callable[[str], tuple[str, int]]:
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
    except ImportError:
        raise SecurityConfigError(
            "sasl_mechanism AWS_MSK_IAM needs the msk extra: pip install 'streamer[msk]'"
        ) from None
    sign: Callable[[str], tuple[str, int]] = MSKAuthTokenProvider.generate_auth_token
    return sign


def security_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments for the settings' security protocol and mechanism."""
    kwargs = settings.kafka_security()
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(settings)
    if settings.sasl_mechanism == "AWS_MSK_IAM":
        assert settings.aws_region is not None, "Settings checks AWS_MSK_IAM has a region"
        kwargs["sasl_mechanism"] = "OAUTHBEARER"
        kwargs["sasl_oauth_token_provider"] = MskIamTokenProvider(settings.aws_region)
    return kwargs


def security_env_names() -> list[str]:
    """The `STREAMER_*` variables of the security settings (protocol, SASL, TLS, AWS region).

    For a child process that must NOT take them: one that talks to a plaintext broker started
    for it (the benchmark's local broker) while this shell has a secured cluster's settings."""
    prefixes = ("security_", "sasl_", "ssl_", "aws_")
    return [
        f"STREAMER_{name.upper()}" for name in Settings.model_fields if name.startswith(prefixes)
    ]
