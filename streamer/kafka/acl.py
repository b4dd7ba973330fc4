"""Two Kafka requests aiokafka lacks: "what may I do on these topics?" and "create these ACLs".

- `topic_operations`: Metadata v8 with `include_topic_authorized_operations` (KIP-430). The
  broker answers, for the *calling* principal, a bit set of the operations its authorizer
  allows on each topic (READ, WRITE, DESCRIBE, ...). It needs only DESCRIBE on the topic, writes
  nothing and shows nothing to anyone: the service's start-up asks it whether it may read its
  input topics and write its result and DLQ topics (`streamer.kafka.access`). A broker without
  an authorizer answers "every operation".
- `create_acls`: CreateAcls v1, for the secured local broker's set-up (run as its super user).

Both go through a plain `aiokafka.client.AIOKafkaClient` with the caller's security settings.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Schema, String

# "the broker did not compute them" (KIP-430): e.g. a broker older than Kafka 2.3.
OPERATIONS_UNKNOWN = -(2**31)


class AclOperation(enum.IntEnum):
    """Kafka's AclOperation codes (the bit index in authorized-operations sets)."""

    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class ResourceType(enum.IntEnum):
    """Kafka's ResourceType codes."""

    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5


class PatternType(enum.IntEnum):
    """Kafka's PatternType codes."""

    LITERAL = 3
    PREFIXED = 4


ALLOW = 3  # AclPermissionType.ALLOW

# --- Metadata v8 ---------------------------------------------------------------------------


class _MetadataResponseV8(Response):
    API_KEY = 3
    API_VERSION = 8
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            Array(
                ("node_id", Int32),
                ("host", String("utf-8")),
                ("port", Int32),
                ("rack", String("utf-8")),
            ),
        ),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        (
            "topics",
            Array(
                ("error_code", Int16),
                ("name", String("utf-8")),
                ("is_internal", Boolean),
                (
                    "partitions",
                    Array(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", Array(Int32)),
                        ("isr_nodes", Array(Int32)),
                        ("offline_replicas", Array(Int32)),
                    ),
                ),
                ("topic_authorized_operations", Int32),
            ),
        ),
        ("cluster_authorized_operations", Int32),
    )


class _MetadataRequestV8(RequestStruct):
    API_KEY = 3
    API_VERSION = 8
    RESPONSE_TYPE = _MetadataResponseV8
    SCHEMA = Schema(
        ("topics", Array(String("utf-8"))),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
    )


class _TopicOperationsRequest(Request[_MetadataRequestV8]):
    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def build(self, request_struct_class: type[_MetadataRequestV8]) -> _MetadataRequestV8:
        return request_struct_class(self._topics, False, False, True)


@dataclass(frozen=True)
class TopicAccess:
    """What the broker says about one topic for the calling principal."""

    topic: str
    error_code: int  # 0, 3 = UNKNOWN_TOPIC_OR_PARTITION, 29 = TOPIC_AUTHORIZATION_FAILED
    operations: int  # bit set of AclOperation; OPERATIONS_UNKNOWN when not computed

    def allows(self, op: AclOperation) -> bool | None:
        """True/False per the broker; None when it did not say."""
        if self.error_code or self.operations == OPERATIONS_UNKNOWN:
            return None
        return bool(self.operations & (1 << op))


async def topic_operations(client: AIOKafkaClient, topics: Iterable[str]) -> dict[str, TopicAccess]:
    """Ask any broker what the client's principal may do on each topic (one round trip)."""
    names = sorted(set(topics))
    node = client.get_random_node()
    response: Any = await client.send(node, _TopicOperationsRequest(names))
    return {
        t[1]: TopicAccess(topic=t[1], error_code=t[0], operations=t[4]) for t in response.topics
    }


# --- CreateAcls v1 -------------------------------------------------------------------------


class _CreateAclsResponseV1(Response):
    API_KEY = 30
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(("error_code", Int16), ("error_message", String("utf-8")))),
    )


class _CreateAclsRequestV1(RequestStruct):
    API_KEY = 30
    API_VERSION = 1
    RESPONSE_TYPE = _CreateAclsResponseV1
    SCHEMA = Schema(
        (
            "creations",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                ("resource_pattern_type", Int8),
                ("principal", String("utf-8")),
                ("host", String("utf-8")),
                ("operation", Int8),
                ("permission_type", Int8),
            ),
        ),
    )


@dataclass(frozen=True)
class AclBinding:
    """ALLOW `operation` on a resource (literal name or prefix) to a principal, from any host."""

    principal: str  # "User:streamer"
    resource_type: ResourceType
    name: str
    operation: AclOperation
    pattern: PatternType = PatternType.LITERAL


class _CreateAclsRequest(Request[_CreateAclsRequestV1]):
    API_KEY = 30

    def __init__(self, bindings: list[AclBinding]) -> None:
        self._bindings = bindings

    def build(self, request_struct_class: type[_CreateAclsRequestV1]) -> _CreateAclsRequestV1:
        return request_struct_class(
            [
                (b.resource_type, b.name, b.pattern, b.principal, "*", b.operation, ALLOW)
                for b in self._bindings
            ]
        )


async def create_acls(
    bootstrap: str, bindings: list[AclBinding], client_kwargs: Mapping[str, Any]
) -> None:
    """Create the ACLs (as a principal allowed to: the local broker's super user)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **client_kwargs)
    await client.bootstrap()
    try:
        response: Any = await asyncio.wait_for(
            client.send(client.get_random_node(), _CreateAclsRequest(bindings)), 30
        )
        errors = [(code, msg) for code, msg in response.results if code]
        if errors:
            raise RuntimeError(f"CreateAcls failed: {errors}")
    finally:
        await client.close()
