"""Fetch Apache Kafka's jars from Maven Central into a cache outside the repository.

No Docker engine runs on the development machines, so the broker is run straight from the
`kafka_2.13` jars that Maven resolves from `deploy/kafka/pom.xml`. The copy is idempotent: a
marker file listing every jar is written only after a complete copy, so an interrupted
install is redone instead of leaving a broker that fails at class-loading time.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
"""The Apache Kafka release the project tests against (docker-compose.yml pins the same)."""

REQUIRED_JARS = ("kafka_2.13-", "kafka-tools-")
"""Jar name prefixes a complete install holds: the broker, and the tools (console producer and
consumer) that the interop tests run. A cache made before a prefix was added is redone."""

HOME_ENV = "STREAMER_KAFKA_HOME"
MARKER_NAME = "install.json"
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"


class KafkaInstallError(RuntimeError):
    """Kafka's jars could not be fetched (no Maven, no network, bad version)."""


@dataclass(frozen=True)
class Installation:
    """Where one Kafka version's jars live, and what the install cost."""

    version: str
    libs: Path
    seconds: float
    fresh: bool

    @property
    def classpath(self) -> str:
        """The `-cp` argument: Java expands `dir/*` to every jar in it."""
        return str(self.libs / "*")


def cache_home(env: str, name: str) -> Path:
    """Root of one downloaded tool's cache: `$<env>` or `~/.cache/streamer/<name>`."""
    override = os.environ.get(env)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "streamer" / name


def kafka_home() -> Path:
    """Root of the Kafka cache: `$STREAMER_KAFKA_HOME` or `~/.cache/streamer/kafka`."""
    return cache_home(HOME_ENV, "kafka")


def version_dir(version: str = KAFKA_VERSION, home: Path | None = None) -> Path:
    """Directory holding one version's `libs/` and install marker."""
    return (home or kafka_home()) / version


def is_installed(version: str = KAFKA_VERSION, home: Path | None = None) -> bool:
    """True when the marker exists and every jar it lists is still on disk."""
    vdir = version_dir(version, home)
    marker = vdir / MARKER_NAME
    try:
        manifest = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    jars = manifest.get("jars")
    if manifest.get("version") != version or not isinstance(jars, list) or not jars:
        return False
    if not all(any(name.startswith(prefix) for name in jars) for prefix in REQUIRED_JARS):
        return False
    return all((vdir / "libs" / name).is_file() for name in jars)


@contextmanager
def _install_lock(vdir: Path) -> Iterator[None]:
    """Serialise installs: parallel pytest sessions must not copy into the same folder."""
    vdir.mkdir(parents=True, exist_ok=True)
    with open(vdir / ".install.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def maven_command(pom: Path, version: str, output_dir: Path) -> list[str]:
    """The Maven invocation that copies Kafka and its runtime dependencies into `output_dir`."""
    return [
        "mvn",
        "-q",
        "-B",
        "-f",
        str(pom),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={output_dir}",
    ]


def install(
    version: str = KAFKA_VERSION,
    home: Path | None = None,
    pom: Path | None = None,
    timeout_s: float = 600.0,
) -> Installation:
    """Make sure Kafka `version` is in the cache; download only when it is missing."""
    started = time.monotonic()
    vdir = version_dir(version, home)
    if is_installed(version, home):
        return Installation(version, vdir / "libs", time.monotonic() - started, fresh=False)
    pom = pom or DEPLOY_DIR / "pom.xml"
    if not pom.is_file():
        raise KafkaInstallError(f"Maven project not found: {pom}")
    if shutil.which("mvn") is None:
        raise KafkaInstallError("Maven ('mvn') is not on PATH; install it (apt-get install maven)")
    with _install_lock(vdir):
        # Another process may have finished the install while this one waited for the lock.
        if is_installed(version, home):
            return Installation(version, vdir / "libs", time.monotonic() - started, fresh=False)
        staging = vdir / f"libs.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            result = subprocess.run(
                maven_command(pom, version, staging),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaInstallError(f"Maven took over {timeout_s:.0f}s fetching Kafka") from exc
        jars = sorted(p.name for p in staging.glob("*.jar")) if staging.is_dir() else []
        complete = all(any(j.startswith(prefix) for j in jars) for prefix in REQUIRED_JARS)
        if result.returncode != 0 or not complete:
            shutil.rmtree(staging, ignore_errors=True)
            tail = (result.stdout + result.stderr).strip()[-2000:]
            raise KafkaInstallError(f"Maven could not fetch Kafka {version}:\n{tail}")
        libs = vdir / "libs"
        (vdir / MARKER_NAME).unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker = {"version": version, "jars": jars, "installed_at": time.time()}
        tmp_marker = vdir / f"{MARKER_NAME}.tmp"
        tmp_marker.write_text(json.dumps(marker, indent=1))
        tmp_marker.replace(vdir / MARKER_NAME)
    return Installation(version, libs, time.monotonic() - started, fresh=True)
