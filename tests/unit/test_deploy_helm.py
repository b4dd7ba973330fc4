"""The Helm chart (deploy/helm/streamer), rendered by the real `helm template` for every variant
and validated offline: Kubernetes objects against the Kubernetes OpenAPI schemas bundled in the
`kubernetes-validate` package (strict: unknown fields are errors), KEDA objects against the
openAPIV3Schema of KEDA's own CRDs (from the KEDA Go module source, made strict the same way),
and the Kafka trigger's metadata keys against those KEDA's Kafka scaler reads.

Then what the chart promises: one workload per route, lag threshold from the route's rate and
budget, replicas within [1, partitions], grace above the drain deadline, probes, PDB, rollout
strategy, static membership from the pod name, accelerator resources.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamer.config import Settings
from tests.ops_tools import REPO, keda_dir, tool

CHART = REPO / "deploy" / "helm" / "streamer"
KUBE_VERSION = "1.33.0"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())

VARIANTS: dict[str, list[str]] = {
    f"{acc}-{membership}": ["--set", f"accelerator={acc}", "--set", f"membership={membership}"]
    for acc in ("cpu", "nvidia", "neuron")
    for membership in ("static", "dynamic")
}
ACCELERATOR_VARIANTS = sorted(VARIANTS)
VARIANTS["sasl-ssl"] = [
    "--set", "kafka.securityProtocol=SASL_SSL", "--set", "kafka.sasl.mechanism=SCRAM-SHA-512",
    "--set", "kafka.sasl.username=streamer", "--set", "kafka.sasl.passwordSecret.name=kafka",
]  # fmt: skip
VARIANTS["no-autoscaling"] = [
    "--set",
    "autoscaling.enabled=false",
    "--set",
    "autoscaling.replicas=3",
]
VARIANTS["mounted-artifact"] = [
    "--set", "artifact.volume.persistentVolumeClaim.claimName=models",
    "--set", "artifact.volume.persistentVolumeClaim.readOnly=true",
    "--set", "artifact.path=/opt/streamer/artifacts/minilm-cpu",
]  # fmt: skip


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("helm")), *args], capture_output=True, text=True, timeout=120, check=False
    )


@functools.cache
def render(variant: str) -> list[dict[str, Any]]:
    """`helm template` of one variant, as a list of objects."""
    out = helm(
        "template", "streamer", str(CHART), "--kube-version", KUBE_VERSION, *VARIANTS[variant]
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


# --- schemas --------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """Reject unknown fields wherever the schema lists the known ones (kubeconform -strict)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.cache
def keda_validators() -> dict[str, jsonschema.protocols.Validator]:
    """kind -> validator from KEDA's CRDs (served version v1alpha1)."""
    validators = {}
    for name in ("keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml"):
        crd = yaml.safe_load((keda_dir() / name).read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
        schema = strict(version["schema"]["openAPIV3Schema"])
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    return validators


@functools.cache
def kafka_trigger_keys() -> set[str]:
    """Metadata keys KEDA's Kafka scaler reads from a trigger (its struct tags)."""
    source = (keda_dir() / "kafka_scaler.go").read_text()
    keys = {
        m.group(1)
        for m in re.finditer(r'keda:"name=([A-Za-z]+),order=([^",]*)', source)
        if "triggerMetadata" in m.group(2)
    }
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= keys
    return keys


def validate(doc: dict[str, Any]) -> None:
    """Raise if the object is not valid for its kind (offline schemas only)."""
    if doc["apiVersion"].startswith("keda.sh/"):
        keda_validators()[doc["kind"]].validate(doc)
        for trigger in doc.get("spec", {}).get("triggers", []):
            assert trigger["type"] == "kafka"
            unknown = set(trigger["metadata"]) - kafka_trigger_keys()
            assert not unknown, f"not read by KEDA's Kafka scaler: {unknown}"
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
    else:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_is_valid_against_the_offline_schemas(variant: str) -> None:
    docs = render(variant)
    kinds = sorted(d["kind"] for d in docs)
    for doc in docs:
        validate(doc)
    assert kinds.count("PodDisruptionBudget") == 2
    assert kinds.count("Service") == 2


def test_helm_lint_strict() -> None:
    out = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda d: d["spec"].update(replicaz=2), "StatefulSet"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy=3),
            "StatefulSet",
        ),
        (lambda d: d["spec"].update(maxReplicas=4), "ScaledObject"),
        (lambda d: d["spec"]["triggers"][0]["metadata"].update(lagTreshold="5"), "ScaledObject"),
        (lambda d: d["spec"]["triggers"][0]["metadata"].update(lagThreshold=84), "ScaledObject"),
        (
            lambda d: d["spec"].update(minAvailable="1", maxUnavailable=1, selectr={}),
            "PodDisruptionBudget",
        ),
    ],
    ids=[
        "unknown-field",
        "wrong-type",
        "keda-unknown-field",
        "keda-trigger-typo",
        "keda-non-string",
        "pdb",
    ],
)
def test_the_validation_catches_planted_errors(mutate: Any, where: str) -> None:
    """The same validation fails on a typo, a wrong type or an unknown field."""
    doc = copy.deepcopy(next(d for d in render("cpu-static") if d["kind"] == where))
    validate(doc)
    mutate(doc)
    with pytest.raises((jsonschema.ValidationError, AssertionError)):
        validate(doc)


# --- what the chart promises ------------------------------------------------------------------


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def lag_threshold(route: str, accelerator: str) -> int:
    """ceil(rate one replica sustains x (P99 budget + commit interval)), in records."""
    spec = VALUES["routes"][route]
    window_s = (spec["p99TargetMs"] + VALUES["commitIntervalMs"]) / 1000
    return math.ceil(spec["targetTps"][accelerator] * window_s)


@pytest.mark.parametrize("variant", ACCELERATOR_VARIANTS)
def test_one_autoscaled_workload_per_route(variant: str) -> None:
    accelerator, membership = variant.split("-")
    docs = render(variant)
    kind = "StatefulSet" if membership == "static" else "Deployment"
    workloads = objects(docs, kind)
    scaled = objects(docs, "ScaledObject")
    assert set(workloads) == set(scaled) == {"streamer-intent", "streamer-duplicate"}
    for name, workload in workloads.items():
        route = name.removeprefix("streamer-")
        spec = VALUES["routes"][route]
        env = env_of(workload)
        assert env["STREAMER_ROUTES"] == route
        so = scaled[name]["spec"]
        assert so["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": kind, "name": name}
        assert 1 <= so["minReplicaCount"] <= so["maxReplicaCount"] <= spec["partitions"]
        (trigger,) = so["triggers"]
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == env["STREAMER_GROUP_ID"] == f"streamer-{route}"
        topic_env = "STREAMER_TOPIC_QUERIES" if route == "intent" else "STREAMER_TOPIC_PAIRS"
        assert meta["topic"] == env[topic_env] == spec["topic"]
        assert meta["bootstrapServers"] == env["STREAMER_BOOTSTRAP_SERVERS"]
        assert int(meta["lagThreshold"]) == lag_threshold(route, accelerator)
        rate_env = f"STREAMER_{route.upper()}_TARGET_TPS"
        assert float(env[rate_env]) == spec["targetTps"][accelerator]
        # A group that never committed must not look lag-free, and never scale to zero.
        assert meta["offsetResetPolicy"] == "earliest"
        assert meta["scaleToZeroOnInvalidOffset"] == "false"
        assert meta["allowIdleConsumers"] == "false"
        assert "replicas" not in workload["spec"], "KEDA owns the replica count"


def test_lag_thresholds_by_hand() -> None:
    """The derivation on the defaults: rate x (budget + commit interval)."""
    assert lag_threshold("intent", "cpu") == 84  # 400/s x 0.21 s
    assert lag_threshold("duplicate", "cpu") == 480  # 400/s x 1.2 s
    assert lag_threshold("intent", "neuron") == 840  # 4,000/s x 0.21 s
    assert lag_threshold("duplicate", "nvidia") == 10_560  # 8,800/s x 1.2 s


@pytest.mark.parametrize("variant", ["cpu-static", "neuron-dynamic", "sasl-ssl"])
def test_graceful_termination_probes_and_disruption_budget(variant: str) -> None:
    docs = render(variant)
    pdbs = objects(docs, "PodDisruptionBudget")
    for name, workload in {**objects(docs, "StatefulSet"), **objects(docs, "Deployment")}.items():
        pod = workload["spec"]["template"]["spec"]
        env = env_of(workload)
        assert pod["terminationGracePeriodSeconds"] > float(env["STREAMER_DRAIN_TIMEOUT_S"])
        (container,) = pod["containers"]
        port = int(env["STREAMER_METRICS_PORT"])
        assert env["STREAMER_METRICS_HOST"] == "0.0.0.0"
        assert container["ports"][0] == {
            "name": "metrics",
            "containerPort": port,
            "protocol": "TCP",
        }
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container["command"] + container["args"] == ["python", "-m", "streamer", "run"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == selector
        assert pdbs[name]["spec"]["maxUnavailable"] >= 1  # a 1-replica route can still drain
        shm = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/dev/shm" in shm
        if workload["kind"] == "Deployment":
            rolling = workload["spec"]["strategy"]["rollingUpdate"]
            assert rolling == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize("variant", ["cpu-static", "nvidia-static"])
def test_static_membership_takes_the_pod_name(variant: str) -> None:
    for workload in objects(render(variant), "StatefulSet").values():
        env = env_of(workload)
        assert env["STREAMER_GROUP_INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        # Longer than a restart, so the same pod name is back before the broker gives up.
        assert int(env["STREAMER_SESSION_TIMEOUT_MS"]) >= 30_000
        assert workload["spec"]["serviceName"] == workload["metadata"]["name"]


def test_dynamic_membership_has_no_instance_id() -> None:
    for workload in objects(render("cpu-dynamic"), "Deployment").values():
        assert "STREAMER_GROUP_INSTANCE_ID" not in env_of(workload)


@pytest.mark.parametrize("accelerator", ["cpu", "nvidia", "neuron"])
def test_accelerator_resources_and_one_worker_per_device(accelerator: str) -> None:
    acc = VALUES["accelerators"][accelerator]
    for workload in objects(render(f"{accelerator}-static"), "StatefulSet").values():
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        env = env_of(workload)
        assert container["image"] == f"streamer:{acc['imageTag']}"
        if accelerator == "nvidia":
            assert limits["nvidia.com/gpu"] == acc["gpus"] == int(env["STREAMER_WORKERS"])
        elif accelerator == "neuron":
            assert limits["aws.amazon.com/neuroncore"] == acc["neuronCores"]
            assert int(env["STREAMER_WORKERS"]) == acc["neuronCores"]
        else:
            assert not {"nvidia.com/gpu", "aws.amazon.com/neuroncore"} & set(limits)
        text = yaml.safe_dump(workload)
        assert "neuron-rtd" not in text and "IPC_LOCK" not in text


def test_env_names_are_settings() -> None:
    """Every STREAMER_* variable the chart sets is a setting (or one of its aliases)."""
    names = {f"STREAMER_{n.upper()}" for n in Settings.model_fields} | {"STREAMER_ROUTES"}
    for variant in ("cpu-static", "sasl-ssl"):
        for workload in objects(render(variant), "StatefulSet").values():
            assert set(env_of(workload)) <= names


def test_artifact_is_baked_by_default_or_mounted_read_only() -> None:
    baked = objects(render("cpu-static"), "StatefulSet")["streamer-intent"]
    assert env_of(baked)["STREAMER_ARTIFACT"] == "/opt/streamer/model"
    # Where the image sets the artifact it bakes in, the chart points at the same path.
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text().splitlines()
    instructions = "\n".join(line for line in dockerfile if not line.lstrip().startswith("#"))
    baked_at = re.findall(r"STREAMER_ARTIFACT=(\S+)", instructions)
    assert all(path == "/opt/streamer/model" for path in baked_at), baked_at
    mounted = objects(render("mounted-artifact"), "StatefulSet")["streamer-intent"]
    (container,) = mounted["spec"]["template"]["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "artifact"]
    assert mount["readOnly"] is True
    assert env_of(mounted)["STREAMER_ARTIFACT"].startswith(mount["mountPath"] + "/")


def test_sasl_reaches_keda_through_a_trigger_authentication() -> None:
    docs = render("sasl-ssl")
    auths = objects(docs, "TriggerAuthentication")
    for name, so in objects(docs, "ScaledObject").items():
        (trigger,) = so["spec"]["triggers"]
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["metadata"]["tls"] == "enable"
        assert trigger["authenticationRef"]["name"] in auths
        env = env_of(objects(docs, "StatefulSet")[name])
        assert env["STREAMER_SASL_PASSWORD"] == {
            "secretKeyRef": {"name": "kafka", "key": "password"}
        }


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["--set", "routes.intent.maxReplicas=13"], "must not exceed its partitions"),
        (["--set", "routes.duplicate.minReplicas=0"], "minReplicas must be >= 1"),
        (["--set", "terminationGraceMarginSeconds=0"], "outlive its drain deadline"),
        (["--set", "accelerator=tpu"], "accelerator must be"),
        (["--set", "membership=cooperative"], "membership must be"),
        (["--set", "kafka.sasl.mechanism=PLAIN"], "passwordSecret.name is required"),
    ],
)
def test_the_chart_refuses_settings_that_cannot_work(values: list[str], reason: str) -> None:
    out = helm("template", "streamer", str(CHART), "--kube-version", KUBE_VERSION, *values)
    assert out.returncode != 0
    assert reason in out.stderr


def test_the_replay_job_is_valid_and_runs_a_resumable_replay() -> None:
    """deploy/replay/job.yaml: a valid Job whose pods run `streamer replay` with one replay id
    (they split the partitions) and resume after a restart (OnFailure)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy" / "replay" / "job.yaml"
    (job,) = list(yaml.safe_load_all(path.read_text()))
    validate(job)
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"][0] == "replay"
    assert sum(a.startswith("--replay-id=") for a in container["args"]) == 1
    assert spec["restartPolicy"] == "OnFailure"
    assert job["spec"]["parallelism"] == job["spec"]["completions"]
    assert spec["terminationGracePeriodSeconds"] > 60  # above the replay's drain
