"""A real Schema Registry for tests and local runs: Apicurio Registry from Maven Central.

No Docker engine runs on the development machines and Confluent's own registry is not
published to Maven Central (nor Karapace to the package index used here), so, like the broker
(`install.py`, `local_broker.py`), the registry runs from what Maven Central serves: Apicurio
Registry 2.6 publishes its whole Quarkus application as `apicurio-registry-app-<v>-all.zip`
(a `-runner.jar` plus `lib/`). With its built-in H2 storage, pointed at a file in a temporary
directory, it starts in a few seconds on Java 17 and serves Confluent's REST API under
`/apis/ccompat/v7`, which is what confluent-kafka's schema-registry client speaks. (Of the
3.x line only 3.0.9 publishes that zip; 3.3.x do not.)

The zip is fetched once into `~/.cache/streamer/apicurio/<version>/` (or
`$STREAMER_REGISTRY_HOME`), unpacked, and marked complete only after a full unpack, so an
interrupted install is redone rather than half-used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from streamer.kafka.install import _install_lock, cache_home
from streamer.kafka.local_broker import HOST, _die_with_parent, find_java, free_port

APICURIO_VERSION = "2.6.13.Final"
"""The Apicurio Registry release tested against (the 2.x line's last; it publishes the app zip)."""

ARTIFACT = "io.apicurio:apicurio-registry-app:{version}:zip:all"
HOME_ENV = "STREAMER_REGISTRY_HOME"
MARKER_NAME = "install.json"
CCOMPAT_PATH = "/apis/ccompat/v7"


class RegistryStartError(RuntimeError):
    """The local registry could not be installed or did not come up; the message says why."""


def registry_home() -> Path:
    """Root of the registry cache: `$STREAMER_REGISTRY_HOME` or `~/.cache/streamer/apicurio`."""
    return cache_home(HOME_ENV, "apicurio")


def runner_jar(version: str = APICURIO_VERSION, home: Path | None = None) -> Path:
    """The unpacked Quarkus runner jar of one version."""
    return (
        (home or registry_home()) / version / "app" / f"apicurio-registry-app-{version}-runner.jar"
    )


def is_installed(version: str = APICURIO_VERSION, home: Path | None = None) -> bool:
    """True when the marker exists and the runner jar is still on disk."""
    vdir = (home or registry_home()) / version
    try:
        marker = json.loads((vdir / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == version and runner_jar(version, home).is_file()


def install(
    version: str = APICURIO_VERSION, home: Path | None = None, timeout_s: float = 600.0
) -> Path:
    """Make sure Apicurio Registry `version` is unpacked in the cache; its runner jar."""
    if is_installed(version, home):
        return runner_jar(version, home)
    if shutil.which("mvn") is None:
        raise RegistryStartError("Maven ('mvn') is not on PATH; install it (apt-get install maven)")
    vdir = (home or registry_home()) / version
    with _install_lock(vdir):
        if is_installed(version, home):
            return runner_jar(version, home)
        staging = vdir / f"download.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        command = [
            "mvn", "-q", "-B", "dependency:copy",
            f"-Dartifact={ARTIFACT.format(version=version)}", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise RegistryStartError(f"Maven took over {timeout_s:.0f}s fetching Apicurio") from exc
        zips = sorted(staging.glob("*.zip")) if staging.is_dir() else []
        if result.returncode != 0 or not zips:
            shutil.rmtree(staging, ignore_errors=True)
            tail = (result.stdout + result.stderr).strip()[-2000:]
            raise RegistryStartError(f"Maven could not fetch Apicurio Registry {version}:\n{tail}")
        app = vdir / "app"
        (vdir / MARKER_NAME).unlink(missing_ok=True)
        shutil.rmtree(app, ignore_errors=True)
        with zipfile.ZipFile(zips[0]) as archive:
            archive.extractall(app)
        shutil.rmtree(staging, ignore_errors=True)
        if not runner_jar(version, home).is_file():
            raise RegistryStartError(f"{zips[0].name} holds no runner jar")
        (vdir / MARKER_NAME).write_text(json.dumps({"version": version, "at": time.time()}))
    return runner_jar(version, home)


class LocalRegistry:
    """One Apicurio Registry JVM on a local port; `url` is the ccompat API.

    Stoppable and restartable on the same port (`stop`, `start`), so tests can take the
    registry away mid-run. Its H2 database is a file in the working directory (not the default
    in-memory one), so a restart keeps every schema and id, as a production registry does.
    """

    def __init__(
        self,
        version: str = APICURIO_VERSION,
        host: str = HOST,
        port: int | None = None,
        start_timeout_s: float = 120.0,
    ) -> None:
        self.version = version
        self.host = host
        self.port = port or free_port(host)
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir = Path(tempfile.mkdtemp(prefix="streamer-registry-"))
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        """Base URL of the Confluent-compatible API (what `schema_registry_url` takes)."""
        return f"http://{self.host}:{self.port}{CCOMPAT_PATH}"

    @property
    def log_file(self) -> Path:
        return self._workdir / "registry.log"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> LocalRegistry:
        """Install if needed, start the JVM and wait until the ccompat API answers."""
        if self.is_running():
            return self
        jar = install(self.version)
        started = time.monotonic()
        command = [
            find_java(), "-Xms64m", "-Xmx384m", "-XX:TieredStopAtLevel=1",
            f"-Dquarkus.http.port={self.port}", f"-Dquarkus.http.host={self.host}",
            "-Dquarkus.log.level=WARN", "-jar", str(jar),
        ]  # fmt: skip
        env = {**os.environ, "REGISTRY_DATASOURCE_URL": f"jdbc:h2:file:{self._workdir}/registry"}
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._workdir,
                preexec_fn=_die_with_parent,  # the JVM dies with the test session
            )
        deadline = started + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise RegistryStartError(
                    f"Apicurio Registry exited at start-up; log tail:\n{self.log_tail()}"
                )
            if self.answers():
                self.start_seconds = time.monotonic() - started
                return self
            time.sleep(0.2)
        self.stop()
        raise RegistryStartError(
            f"Apicurio Registry did not answer within {self.start_timeout_s:.0f}s; "
            f"log tail:\n{self.log_tail()}"
        )

    def answers(self, timeout_s: float = 1.0) -> bool:
        """True when `GET <url>/subjects` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/subjects", timeout=timeout_s) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s` (the port is free again on return)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
