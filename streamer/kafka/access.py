"""What the service asks the broker before and while it runs: can I connect, may I do my job?

- `diagnose()` (after the clients failed to start): says WHY in one line: TCP refused, a TLS
  listener spoken to without TLS, the broker's certificate rejected (expired, unknown CA, wrong
  host name) or the SASL login refused. aiokafka only says "Unable to bootstrap"; the reason
  is only in its log.
- `check(read, write)` (at start-up): every topic exists and the broker's authorizer lets this
  principal READ the input topics and WRITE the result and dead-letter topics, and READ its
  consumer group (DescribeGroups with authorized operations: without it the consumer never
  joins and the service would sit idle, fetch errors in its log). It asks with one
  Metadata v8 request (`streamer.kafka.acl.topic_operations`, KIP-430): the broker answers with
  the operations the caller is allowed, so nothing is written anywhere (a test record in the
  DLQ would be one downstream has to skip) and no right to read ACLs (DescribeAcls, which
  needs cluster ALTER/DESCRIBE) is needed. A DLQ the service may not write would otherwise
  only show at the first bad record, which would then block its partition.
- `ping()` (while running, every few seconds): a bounded metadata round trip; readiness
  (`/readyz`) follows it, so an instance whose broker is away is taken out of service.

Errors never carry a secret (`redact`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from streamer.config import Settings
from streamer.kafka.acl import OPERATIONS_UNKNOWN, AclOperation, topic_operations
from streamer.kafka.probe import split_bootstrap
from streamer.kafka.security import SecurityConfigError, redact, security_kwargs, ssl_context

UNKNOWN_TOPIC = 3
TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30


def tls_reason(verify_message: str, host: str) -> str:
    """A certificate verification failure in words, with what to check."""
    msg = verify_message or "verification failed"
    if "expired" in msg:
        hint = "the broker's certificate has expired: renew it"
    elif "issuer" in msg or "self-signed" in msg or "self signed" in msg:
        hint = "is ssl_cafile the CA that signed the broker's certificate?"
    elif "hostname" in msg.lower() or "ip address mismatch" in msg.lower():
        hint = f"the certificate does not name {host} (ssl_check_hostname=false skips this check)"
    else:
        hint = "check ssl_cafile and the broker's certificate"
    return f"the broker's TLS certificate was rejected: {msg} ({hint})"


class BrokerAccess:
    """Connection diagnosis, the start-up permission check and the liveness ping."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AIOKafkaClient | None = None

    def _redact(self, text: str) -> str:
        return redact(text, self._settings.secrets())

    async def _started_client(self) -> AIOKafkaClient:
        if self._client is None:
            client = AIOKafkaClient(
                bootstrap_servers=self._settings.bootstrap_servers,
                client_id=f"{self._settings.client_id}-access",
                request_timeout_ms=10_000,
                **security_kwargs(self._settings),
            )
            await asyncio.wait_for(client.bootstrap(), 30)
            self._client = client
        return self._client

    async def diagnose(self) -> str | None:
        """Why connecting fails, in one line; None when this probe connects fine."""
        try:
            return self._redact(await self._diagnose() or "") or None
        except Exception as exc:  # a diagnosis must never hide the original failure
            return self._redact(f"(diagnosis failed: {type(exc).__name__})")

    async def _diagnose(self) -> str | None:
        s = self._settings
        host, port = split_bootstrap(s.bootstrap_servers)[0]
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            writer.close()
        except TimeoutError:
            return f"cannot connect to {host}:{port} (timed out)"
        except OSError as exc:
            return f"cannot connect to {host}:{port} ({exc.strerror or type(exc).__name__})"
        context = None
        if s.security_protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and await _speaks_tls(host, port):
            return (
                f"{host}:{port} speaks TLS but security_protocol is {s.security_protocol}: set "
                "STREAMER_SECURITY_PROTOCOL (SSL or SASL_SSL) and the cluster's STREAMER_SASL_* "
                "and STREAMER_SSL_* settings (`make kafka-up SECURE=1` prints a file of them "
                "to source)"
            )
        if s.security_protocol in ("SSL", "SASL_SSL"):
            try:
                context = ssl_context(s)
            except SecurityConfigError as exc:
                return str(exc)
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=context, server_hostname=host), 15
                )
                writer.close()
            except ssl.SSLCertVerificationError as exc:
                return tls_reason(exc.verify_message, host)
            except ssl.SSLError as exc:
                return f"TLS handshake with {host}:{port} failed: {exc.reason or exc}"
            except (OSError, TimeoutError) as exc:
                return f"TLS handshake with {host}:{port} failed: {type(exc).__name__}"
        if s.security_protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
            kwargs: dict[str, Any] = security_kwargs(s)
            try:
                conn = await asyncio.wait_for(
                    create_conn(host, port, client_id=f"{s.client_id}-diagnose", **kwargs), 20
                )
                conn.close()
            except (AuthenticationFailedError, SaslAuthenticationFailed):
                who = f" as user '{s.sasl_username}'" if s.sasl_username else ""
                return (
                    f"SASL {s.sasl_mechanism} authentication{who} failed: wrong username or "
                    "password, or no such user on the broker"
                )
            except UnsupportedSaslMechanismError:
                return f"the broker does not offer SASL {s.sasl_mechanism} on {host}:{port}"
            except (KafkaError, OSError, TimeoutError) as exc:
                return f"SASL handshake with {host}:{port} failed: {type(exc).__name__}"
        return None

    async def check(self, read: Iterable[str], write: Iterable[str]) -> list[str]:
        """Problems that stop start-up: a topic missing, READ or WRITE not granted."""
        read, write = set(read), set(write)
        client = await self._started_client()
        access = await asyncio.wait_for(topic_operations(client, read | write), 30)
        problems = []
        for topic in sorted(read | write):
            found = access.get(topic)
            if found is None or found.error_code == UNKNOWN_TOPIC:
                problems.append(f"topic {topic} does not exist")
                continue
            if found.error_code == TOPIC_AUTHORIZATION_FAILED:
                problems.append(f"not authorized to DESCRIBE topic {topic} (no ACL for this user)")
                continue
            if found.error_code:
                problems.append(f"topic {topic}: broker error code {found.error_code}")
                continue
            for op, topics in ((AclOperation.READ, read), (AclOperation.WRITE, write)):
                if topic in topics and found.allows(op) is False:
                    problems.append(f"not authorized to {op.name} topic {topic} (missing ACL)")
        if read:
            problems += await self._check_group(self._settings.group_id)
        return [self._redact(p) for p in problems]

    async def _check_group(self, group: str) -> list[str]:
        """READ on the consumer group (without it the consumer never joins: fetches fail)."""
        missing = [f"not authorized to READ consumer group {group} (missing ACL)"]
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-access",
            request_timeout_ms=10_000,
            **security_kwargs(self._settings),
        )
        try:
            await asyncio.wait_for(admin.start(), 30)
            responses = await asyncio.wait_for(
                admin.describe_consumer_groups([group], include_authorized_operations=True), 30
            )
        except GroupAuthorizationFailedError:
            return missing
        finally:
            await admin.close()
        for response in responses:
            for described in response.to_object()["groups"]:
                code = described["error_code"]
                operations = described.get("authorized_operations", OPERATIONS_UNKNOWN)
                if code == GROUP_AUTHORIZATION_FAILED or (
                    code == 0
                    and operations != OPERATIONS_UNKNOWN
                    and not operations & (1 << AclOperation.READ)
                ):
                    return missing
        return []

    async def ping(self, timeout_s: float = 5.0) -> bool:
        """True when a broker answers a small metadata request within timeout_s."""
        try:
            client = await asyncio.wait_for(self._started_client(), timeout_s)
            node = client.get_random_node()
            if node is None:
                return False
            await asyncio.wait_for(client.send(node, _ping_request()), timeout_s)
        except Exception:
            return False
        return True

    async def close(self) -> None:
        """Close the probe's own connection."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


async def _speaks_tls(host: str, port: int) -> bool:
    """True when a TLS handshake with host:port succeeds (certificate not checked: this only
    asks which protocol the listener speaks). A plaintext client's first request to a TLS
    listener is refused without a word, which aiokafka reports as "Unable to bootstrap"."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context), 5)
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    return True


def _ping_request() -> Any:
    from aiokafka.protocol.metadata import MetadataRequest

    return MetadataRequest([])
