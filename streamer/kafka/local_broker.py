"""Run a real single-node Apache Kafka (KRaft) on 127.0.0.1 without Docker.

The jars come from Maven Central (`streamer.kafka.install`); this module renders the broker
config from `deploy/kafka/server.properties.template`, formats KRaft storage once per data
directory, starts `kafka.Kafka` on the machine's Java 17+, waits until the broker really
serves (metadata and group coordination, `streamer.kafka.probe`) and stops it with SIGTERM,
then SIGKILL. Nothing of it is left behind: a broker started by a test session dies with
that session even when the session is killed.

Secured mode (`secure=True`; `make kafka-up SECURE=1`): one SASL_SSL listener (SCRAM-SHA-512)
with a CA and broker certificate generated at start (`streamer.kafka.local_tls`), users created
by `kafka-storage format --add-scram` with random passwords, the StandardAuthorizer with no
access unless an ACL grants it (`BrokerSecurity.grant`), the broker's own principal and `admin`
as super users, and the controller listener on mutual TLS. A second SASL_SSL listener serves an
expired certificate (`expired_bootstrap`), for tests of what a client does with one.

Command line (the Makefile's `kafka-up` / `kafka-down`)::

    python -m streamer.kafka.local_broker up       # idempotent; last line = bootstrap address
    python -m streamer.kafka.local_broker up --secure   # + TLS, SCRAM users, ACLs
    python -m streamer.kafka.local_broker status
    python -m streamer.kafka.local_broker down [--purge]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from string import Template
from types import TracebackType

from streamer.kafka.install import (
    DEPLOY_DIR,
    KAFKA_VERSION,
    MARKER_NAME,
    install,
    kafka_home,
    version_dir,
)
from streamer.kafka.probe import ProbeError, run_in_fresh_loop, tcp_accepts, wait_until_ready

HOST = "127.0.0.1"
DEFAULT_PORT = 9092
MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"

# SerialGC avoids G1's concurrent threads on a 2-core machine; the heap cap keeps several
# brokers (parallel test sessions) affordable. Class-data sharing (cds_flags below) is added
# on top of either flag set.
DEFAULT_JVM_FLAGS: tuple[str, ...] = (
    "-XX:+UseSerialGC",
    "-Xshare:auto",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)
# For short-lived test brokers, where start time dominates: C1-only JIT started in a median
# 2.4 s vs 4.4 s with C2 (6 interleaved starts each, load average ~9 on 2 cores) because C2's
# compiler threads compete for the CPU. Not the default: C1 code is slower under sustained
# load, and `up` brokers serve benchmarks.
FAST_START_JVM_FLAGS: tuple[str, ...] = (*DEFAULT_JVM_FLAGS, "-XX:TieredStopAtLevel=1")
DEFAULT_HEAP = "512m"

_PR_SET_PDEATHSIG = 1


class BrokerStartError(RuntimeError):
    """The broker could not be started; the message carries the tail of its log."""


# --- pure parts: ports, config, command line, state ------------------------------------


def port_is_free(port: int, host: str = HOST) -> bool:
    """True when nothing listens on host:port and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST, avoid: Iterable[int] = ()) -> int:
    """A port the kernel considers free right now (another process may still take it)."""
    avoided = set(avoid)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in avoided:
            return port
    raise OSError("no free port found")


def choose_port(
    preferred: Iterable[int | None] = (), host: str = HOST, avoid: Iterable[int] = ()
) -> int:
    """The first preferred port that is free, else any free port."""
    avoided = set(avoid)
    for port in preferred:
        if port and port not in avoided and port_is_free(port, host):
            return port
    return free_port(host, avoided)


def new_cluster_id() -> str:
    """A KRaft cluster id: Kafka's Uuid format, 16 random bytes in url-safe base64.

    Like Kafka's own ``Uuid.randomUuid()``, never one starting with ``-``: kafka-storage's
    argument parser reads such an id after ``-t`` as an option and refuses to format (1 in
    64 random ids; it failed a benchmark start here).
    """
    import base64
    import uuid

    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def render_server_properties(
    template: str,
    *,
    node_id: int,
    host: str,
    port: int,
    controller_port: int,
    data_dir: Path,
    overrides: Mapping[str, object] | None = None,
) -> str:
    """Fill the template's placeholders and append overrides (a later key wins in Java)."""
    if port == controller_port:
        raise ValueError("broker and controller need different ports")
    text = Template(template).substitute(
        node_id=node_id,
        host=host,
        port=port,
        controller_port=controller_port,
        data_dir=str(data_dir),
    )
    if overrides:
        lines = [f"{key}={_property_value(value)}" for key, value in overrides.items()]
        text = text.rstrip("\n") + "\n\n# per-instance overrides\n" + "\n".join(lines) + "\n"
    return text


def _property_value(value: object) -> str:
    """Java properties spell booleans in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_properties(text: str) -> dict[str, str]:
    """Read a simple Java properties text (key=value, # comments; later keys win)."""
    result: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = line.partition("=")
        result[key.strip()] = value.strip()
    return result


def java_command(
    java: str,
    classpath: str,
    main_class: str,
    args: Iterable[str],
    *,
    heap: str = DEFAULT_HEAP,
    log4j_config: Path | None = None,
    jvm_flags: Iterable[str] = DEFAULT_JVM_FLAGS,
) -> list[str]:
    """The java command line for one of Kafka's main classes."""
    cmd = [java, f"-Xmx{heap}", *jvm_flags]
    if log4j_config is not None:
        cmd.append(f"-Dlog4j2.configurationFile={log4j_config}")
    return [*cmd, "-cp", classpath, main_class, *args]


def find_java() -> str:
    """`$JAVA_HOME/bin/java` if set, else `java` on PATH; Kafka 4 needs Java 17+."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerStartError(
            "no 'java' on PATH: Kafka 4.x needs Java 17+ (apt-get install openjdk-17-jre-headless)"
        )
    return found


@dataclass(frozen=True)
class BrokerState:
    """What `up` remembers about the broker it left running, for `status` and `down`."""

    pid: int
    host: str
    port: int
    controller_port: int
    workdir: str
    version: str
    started_at: float
    cds_pending: str | None = None
    cds_archive: str | None = None
    secure: bool = False

    @property
    def bootstrap_servers(self) -> str:
        """The address clients connect to."""
        return f"{self.host}:{self.port}"


def state_path(home: Path | None = None) -> Path:
    """Where `up` writes its state: `<kafka home>/run/state.json`."""
    return (home or kafka_home()) / "run" / "state.json"


def write_state(path: Path, state: BrokerState) -> None:
    """Write the state atomically so a crash never leaves half a JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=1))
    tmp.replace(path)


def read_state(path: Path) -> BrokerState | None:
    """The saved state, or None when absent or unreadable (treated as 'not running')."""
    try:
        data = json.loads(path.read_text())
        return BrokerState(**data)
    except (OSError, ValueError, TypeError):
        return None


def pid_is_kafka(pid: int) -> bool:
    """True when `pid` is alive and is a Kafka broker JVM (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return MAIN_CLASS.encode() in cmdline.split(b"\0")


def terminate_pid(pid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM a broker we did not spawn, wait, then SIGKILL; True if it had to be killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_is_kafka(pid):
            return False
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    while pid_is_kafka(pid):
        time.sleep(0.05)
    return True


def cds_archive_path(java: str, version: str, home: Path | None = None) -> Path:
    """Where the broker's class-data-sharing archive lives for this JVM and Kafka version.

    A dynamic CDS archive is only valid for the JVM build and the jars that wrote it, so the
    file name carries a digest of the java binary and of the install marker.
    """
    real = Path(java).resolve()
    vdir = version_dir(version, home)
    parts = [str(real)]
    # The archive also records the jars' sizes and times: a re-install needs a new one.
    for path in (real, vdir / MARKER_NAME):
        try:
            st = path.stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append("-")
    digest = hashlib.sha256(":".join(parts).encode()).hexdigest()[:12]
    return vdir / f"broker-cds-{digest}.jsa"


def cds_flags(archive: Path, dump_to: Path | None) -> list[str]:
    """JVM flags that use the archive if it exists, else record one at exit.

    Loading Kafka's ~6,000 classes from the archive cut broker start from ~4.9 s to ~2.7 s
    on the loaded 2-core machine; the one-time recording costs a few seconds at stop.
    """
    if archive.is_file():
        return [f"-XX:SharedArchiveFile={archive}"]
    if dump_to is not None:
        return [f"-XX:ArchiveClassesAtExit={dump_to}"]
    return []


def adopt_cds_archive(pending: Path, archive: Path, clean_exit: bool) -> bool:
    """Move a freshly recorded archive into place (first writer wins); True if adopted."""
    try:
        if clean_exit and not archive.exists() and pending.stat().st_size > 0:
            pending.replace(archive)
            return True
    except OSError:
        pass
    pending.unlink(missing_ok=True)
    return False


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def summarize_errors(log: str, limit: int = 8) -> str:
    """The log's ERROR lines and exception causes, without stack frames or repeats."""
    picked: list[str] = []
    for line in log.splitlines():
        text = line.strip()
        is_error = " ERROR " in line or " FATAL " in line or text.startswith("Caused by:")
        if is_error and text not in picked:
            picked.append(text)
    return "\n".join(picked[:limit]) or "(none found)"


def _last_lines(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail(path: Path, lines: int, since: int = 0) -> str:
    """The last lines of a log file, read from byte offset `since`."""
    try:
        with open(path, "rb") as handle:
            handle.seek(since)
            data = handle.read()
    except OSError:
        return "(no broker log)"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# --- secured mode ------------------------------------------------------------------------

ADMIN_USER = "admin"
BROKER_PRINCIPAL = "User:CN=streamer-broker"
SCRAM = "SCRAM-SHA-512"


class BrokerSecurity:
    """TLS material, SCRAM users and ACL helpers of one secured local broker.

    Made once per work directory: the CA, the broker's certificates and the users' random
    passwords live as long as the broker's data (a restart keeps them). Passwords are in memory
    and in the broker's own 0600 files (server.properties' JAAS lines), nowhere else.
    """

    def __init__(self, tls_dir: Path, host: str, users: Iterable[str]) -> None:
        import secrets

        from streamer.kafka.local_tls import CertificateAuthority

        self.tls_dir = tls_dir
        self.host = host
        ca = CertificateAuthority()
        hosts = tuple(dict.fromkeys((host, "localhost", "127.0.0.1")))
        tls_dir.mkdir(parents=True, exist_ok=True)
        (tls_dir / "ca.pem").write_bytes(ca.cert_pem)
        ca.issue("streamer-broker", hosts=hosts).write(tls_dir / "broker.pem")
        ca.issue("streamer-broker", hosts=hosts, expired=True).write(tls_dir / "broker-expired.pem")
        self._ca = ca
        self.passwords: dict[str, str] = {
            name: secrets.token_urlsafe(24) for name in dict.fromkeys([ADMIN_USER, *users])
        }
        self.expired_port: int | None = None
        self.bootstrap_servers = ""

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients trust (ssl_cafile)."""
        return self.tls_dir / "ca.pem"

    @property
    def expired_bootstrap(self) -> str:
        """A listener of the same broker whose certificate expired yesterday."""
        return f"{self.host}:{self.expired_port}"

    def issue_client_certificate(self, common_name: str, directory: Path) -> tuple[Path, Path]:
        """A client certificate and key signed by this broker's CA (for mTLS clients)."""
        cert, key = directory / f"{common_name}.pem", directory / f"{common_name}.key"
        self._ca.issue(common_name).write(cert, key)
        return cert, key

    def properties(self, port: int, controller_port: int) -> dict[str, object]:
        """server.properties overrides of the secured mode."""
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_USER}" password="{self.passwords[ADMIN_USER]}";'
        )
        h = self.host
        return {
            "listeners": f"SASL_SSL://{h}:{port},EXPIRED://{h}:{self.expired_port},"
            f"CONTROLLER://{h}:{controller_port}",
            "advertised.listeners": f"SASL_SSL://{h}:{port},EXPIRED://{h}:{self.expired_port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,EXPIRED:SASL_SSL,CONTROLLER:SSL",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "listener.name.expired.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": self.tls_dir / "broker.pem",
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.ca_file,
            "listener.name.expired.ssl.keystore.type": "PEM",
            "listener.name.expired.ssl.keystore.location": self.tls_dir / "broker-expired.pem",
            # The broker reaches its controller as the certificate's principal.
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_USER};{BROKER_PRINCIPAL}",
            "allow.everyone.if.no.acl.found": False,
        }

    def format_args(self) -> list[str]:
        """kafka-storage format arguments that create the SCRAM users in the metadata log."""
        args: list[str] = []
        for name, password in self.passwords.items():
            args += ["--add-scram", f"{SCRAM}=[name={name},password={password}]"]
        return args

    def client_kwargs(self, user: str = ADMIN_USER) -> dict[str, object]:
        """aiokafka security arguments for `user` (a new SSLContext each call)."""
        from aiokafka.helpers import create_ssl_context

        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": create_ssl_context(cafile=str(self.ca_file)),
            "sasl_mechanism": SCRAM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.passwords[user],
        }

    def service_env(self, user: str) -> dict[str, str]:
        """STREAMER_* variables that make the service connect as `user`."""
        return {
            "STREAMER_SECURITY_PROTOCOL": "SASL_SSL",
            "STREAMER_SASL_MECHANISM": SCRAM,
            "STREAMER_SASL_USERNAME": user,
            "STREAMER_SASL_PASSWORD": self.passwords[user],
            "STREAMER_SSL_CAFILE": str(self.ca_file),
        }

    def grant(
        self,
        user: str,
        *,
        read: Iterable[str] = (),
        write: Iterable[str] = (),
        describe: Iterable[str] = (),
        groups: Iterable[str] = (),
        transactional_ids: Iterable[str] = (),
        prefixed: bool = False,
    ) -> None:
        """ALLOW `user` READ (topics in `read`), WRITE (`write`), DESCRIBE (`describe`, and
        every topic above), READ on `groups`, and WRITE and DESCRIBE on the prefixes in
        `transactional_ids` (exactly-once: one id per input partition, `<group>-...`); other
        names are prefixes when `prefixed`."""
        from streamer.kafka.acl import (
            AclBinding,
            AclOperation,
            PatternType,
            ResourceType,
            create_acls,
        )

        pattern = PatternType.PREFIXED if prefixed else PatternType.LITERAL
        principal = f"User:{user}"
        wanted: list[tuple[ResourceType, str, AclOperation]] = []
        for name in read:
            wanted += [(ResourceType.TOPIC, name, AclOperation.READ)]
        for name in write:
            wanted += [(ResourceType.TOPIC, name, AclOperation.WRITE)]
        for name in {*read, *write, *describe}:
            wanted += [(ResourceType.TOPIC, name, AclOperation.DESCRIBE)]
        for name in groups:
            wanted += [(ResourceType.GROUP, name, AclOperation.READ)]
        bindings = [AclBinding(principal, t, n, op, pattern) for t, n, op in wanted]
        bindings += [
            AclBinding(principal, ResourceType.TRANSACTIONAL_ID, name, op, PatternType.PREFIXED)
            for name in transactional_ids
            for op in (AclOperation.WRITE, AclOperation.DESCRIBE)
        ]
        run_in_fresh_loop(
            lambda: create_acls(self.bootstrap_servers, bindings, self.client_kwargs()), 60.0
        )

    def write_env_file(self, path: Path, user: str) -> Path:
        """`export STREAMER_...` lines for `user` in a 0600 file (for `make kafka-up SECURE=1`)."""
        text = "".join(f"export {k}={v}\n" for k, v in self.service_env(user).items())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return path


# --- the broker process -----------------------------------------------------------------


class LocalKafka:
    """One Apache Kafka node (broker + controller) on 127.0.0.1, for development and tests.

    Ports are picked once and kept, so `restart()` comes back on the same address with the
    same data directory: committed offsets and topics survive it. The work directory is a
    fresh temporary one unless given; a temporary one is deleted by `close()` (and by the
    context manager), never by `stop()`.

    `die_with_parent=True` (the default) makes the kernel stop the broker when the process
    that called `start()` exits, even by SIGKILL. Linux ties this to the calling *thread*:
    call `start()` from a thread that lives as long as the broker should.
    """

    def __init__(
        self,
        version: str = KAFKA_VERSION,
        *,
        host: str = HOST,
        port: int | None = None,
        controller_port: int | None = None,
        workdir: Path | None = None,
        heap: str = DEFAULT_HEAP,
        jvm_flags: Iterable[str] = DEFAULT_JVM_FLAGS,
        overrides: Mapping[str, object] | None = None,
        die_with_parent: bool = True,
        class_data_sharing: bool = True,
        start_timeout_s: float = 90.0,
        stop_timeout_s: float = 30.0,
        node_id: int = 1,
        secure: bool = False,
        users: Iterable[str] = ("streamer",),
    ) -> None:
        self._version = version
        self.host = host
        self._port = port
        self._controller_port = controller_port
        self._ports_fixed = port is not None
        self._owns_workdir = workdir is None
        self._workdir = Path(workdir) if workdir is not None else None
        self.heap = heap
        self.jvm_flags = tuple(jvm_flags)
        self.overrides = dict(overrides or {})
        self.die_with_parent = die_with_parent
        self.class_data_sharing = class_data_sharing
        self._cds_archive: Path | None = None
        self._cds_pending: Path | None = None
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.node_id = node_id
        self._secure = secure
        self._users = tuple(users)
        self.security: BrokerSecurity | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._log_offset = 0
        self.install_seconds: float | None = None
        self.format_seconds: float | None = None
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None

    # -- read-only facts

    @property
    def version(self) -> str:
        """The Apache Kafka version this node runs."""
        return self._version

    @property
    def port(self) -> int:
        """The client port (valid after the first `start()`)."""
        if self._port is None:
            raise RuntimeError("broker not started yet: no port chosen")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """'127.0.0.1:<port>' for clients (valid after the first `start()`)."""
        return f"{self.host}:{self.port}"

    @property
    def workdir(self) -> Path:
        """Holds server.properties, broker.log and data/."""
        if self._workdir is None:
            raise RuntimeError("broker not started yet: no work directory")
        return self._workdir

    @property
    def data_dir(self) -> Path:
        """The KRaft log directory (topics, offsets, metadata)."""
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        """The broker's stdout/stderr (log4j2 console appender)."""
        return self.workdir / "broker.log"

    @property
    def pid(self) -> int | None:
        """The JVM's pid while it runs."""
        return self._proc.pid if self.is_running() and self._proc else None

    def is_running(self) -> bool:
        """True while the JVM we started is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last log lines of the current (or last) run, for error messages."""
        return _tail(self.log_file, lines, self._log_offset)

    # -- lifecycle

    def start(self) -> LocalKafka:
        """Install if needed, format storage once, start the JVM and wait until it serves."""
        if self.is_running():
            return self
        fresh_workdir = self._workdir is None
        try:
            return self._start()
        except BaseException:
            # A temporary directory made by this failed first start holds nothing worth
            # keeping (the error message already carries the log tail).
            if fresh_workdir and self._owns_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            raise

    def _start(self) -> LocalKafka:
        installation = install(self._version)
        self.install_seconds = installation.seconds
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="streamer-kafka-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        java = find_java()
        if self.class_data_sharing:
            self._cds_archive = cds_archive_path(java, self._version)
        # Auto-picked ports can be taken between the check and the JVM's bind; pick again,
        # but only before the first start: a restart must come back on the same address.
        attempts = 1 if self._ports_fixed or self._started_once else 3
        if self._secure and self.security is None:
            self.security = BrokerSecurity(self.workdir / "tls", self.host, self._users)
        for attempt in range(attempts):
            self._pick_ports(fresh=attempt > 0)
            if self.security is not None and (
                self.security.expired_port is None or (attempt > 0 and not self._started_once)
            ):
                self.security.expired_port = free_port(
                    self.host, avoid=[self.port, self._controller_port or 0]
                )
            if self.security is not None:
                self.security.bootstrap_servers = self.bootstrap_servers
            properties = self._write_properties()
            self._format_storage(java, installation.classpath, properties)
            try:
                self._spawn_and_wait(java, installation.classpath, properties)
                self._started_once = True
                return self
            except BrokerStartError as exc:
                if attempt + 1 < attempts and "Address already in use" in str(exc):
                    continue
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after `stop_timeout_s`; keeps data."""
        proc = self._proc
        if proc is None:
            return
        started = time.monotonic()
        killed = False
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed = True
        self._proc = None
        self.stop_seconds = time.monotonic() - started
        self._adopt_cds_archive(clean_exit=not killed)

    def _adopt_cds_archive(self, clean_exit: bool) -> None:
        """Keep the class archive the JVM wrote at exit; a killed JVM's file may be partial."""
        pending, self._cds_pending = self._cds_pending, None
        if pending is None or self._cds_archive is None:
            return
        adopt_cds_archive(pending, self._cds_archive, clean_exit)

    def detach_cds_archive(self) -> tuple[Path | None, Path | None]:
        """Hand over (pending, final) archive paths to whoever will stop this JVM instead."""
        pending, self._cds_pending = self._cds_pending, None
        return pending, self._cds_archive

    def restart(self) -> LocalKafka:
        """Stop and start again on the same ports and data (committed offsets survive)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and delete the work directory if this instance created it."""
        self.stop()
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port else "not started"
        return f"LocalKafka(version={self._version!r}, {where}, running={self.is_running()})"

    # -- internals

    def _pick_ports(self, fresh: bool) -> None:
        if self._ports_fixed and self._controller_port is None:
            self._controller_port = choose_port(avoid=[self.port])
        if self._ports_fixed:
            return
        if fresh or self._port is None:
            self._port = free_port(self.host)
            self._controller_port = None
        if self._controller_port is None:
            self._controller_port = free_port(self.host, avoid=[self._port])

    def _write_properties(self) -> Path:
        assert self._controller_port is not None
        template = (DEPLOY_DIR / "server.properties.template").read_text()
        overrides = dict(self.overrides)
        if self.security is not None:
            overrides = {**self.security.properties(self.port, self._controller_port), **overrides}
        text = render_server_properties(
            template,
            node_id=self.node_id,
            host=self.host,
            port=self.port,
            controller_port=self._controller_port,
            data_dir=self.data_dir,
            overrides=overrides,
        )
        path = self.workdir / "server.properties"
        # 0600: in secured mode it holds the admin user's password (JAAS line).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return path

    def _format_storage(self, java: str, classpath: str, properties: Path) -> None:
        """Format once: re-formatting would mint a new cluster and lose committed offsets."""
        if (self.data_dir / "meta.properties").exists():
            self.format_seconds = 0.0
            return
        started = time.monotonic()
        cmd = java_command(
            java,
            classpath,
            STORAGE_TOOL,
            [
                "format",
                "-t",
                new_cluster_id(),
                "-c",
                str(properties),
                *(self.security.format_args() if self.security else []),
            ],
            heap="256m",
            log4j_config=DEPLOY_DIR / "log4j2.properties",
            # A one-shot tool: start time is all that matters.
            jvm_flags=[
                *FAST_START_JVM_FLAGS,
                *(cds_flags(self._cds_archive, None) if self._cds_archive else []),
            ],
        )
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise BrokerStartError(
                f"formatting KRaft storage in {self.data_dir} failed "
                f"(rc={result.returncode}):\n{(result.stdout + result.stderr)[-3000:]}"
            )
        self.format_seconds = time.monotonic() - started

    def _spawn_and_wait(self, java: str, classpath: str, properties: Path) -> None:
        flags = list(self.jvm_flags)
        if self._cds_archive is not None:
            if not self._cds_archive.is_file():
                self._cds_pending = self._cds_archive.with_name(
                    f"{self._cds_archive.stem}.{os.getpid()}.{time.time_ns()}.tmp"
                )
            flags += cds_flags(self._cds_archive, self._cds_pending)
        cmd = java_command(
            java,
            classpath,
            MAIN_CLASS,
            [str(properties)],
            heap=self.heap,
            log4j_config=DEPLOY_DIR / "log4j2.properties",
            jvm_flags=flags,
        )
        started = time.monotonic()
        with open(self.log_file, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"=== streamer: starting Kafka {self._version} at {time.ctime()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                # Own session: a Ctrl-C meant for pytest must not skip the clean shutdown.
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        try:
            wait_until_ready(
                self.bootstrap_servers,
                self.start_timeout_s,
                self.is_running,
                client_kwargs=self.security.client_kwargs if self.security else None,
            )
        except ProbeError as exc:
            alive = self.is_running()
            # A JVM that never served has loaded only part of the broker's classes: an
            # archive of those would make every later start slower, so it is not kept.
            pending, self._cds_pending = self._cds_pending, None
            self.stop()
            if pending is not None:
                pending.unlink(missing_ok=True)
            state = "did not become ready" if alive else "exited"
            # A temporary work dir is deleted after a failed start: name the log only if kept.
            where = "" if self._owns_workdir else f" {self.log_file}"
            log_text = self.log_tail(400)
            raise BrokerStartError(
                f"Kafka {self._version} at {self.bootstrap_servers} {state} ({exc}).\n"
                f"Command: {' '.join(cmd)}\n"
                f"Errors in the broker log:\n{summarize_errors(log_text)}\n"
                f"Broker log{where} (last lines):\n{_last_lines(log_text, 25)}"
            ) from exc
        self.start_seconds = time.monotonic() - started


# --- command line -----------------------------------------------------------------------


def _alive(state: BrokerState | None) -> bool:
    return state is not None and pid_is_kafka(state.pid) and tcp_accepts(state.host, state.port)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the dev broker unless the one from a previous `up` still runs."""
    path = state_path()
    previous = read_state(path)
    if previous is not None and _alive(previous):
        if previous.secure != args.secure:
            kind = "secured" if previous.secure else "plaintext"
            print(f"a {kind} Kafka runs (pid {previous.pid}): `make kafka-down` first")
            return 1
        print(f"Kafka {previous.version} already running (pid {previous.pid})")
        print(previous.bootstrap_servers)
        return 0
    if previous is not None and pid_is_kafka(previous.pid):
        # Alive but not answering: a wedged JVM from an earlier `up`. Replace it.
        terminate_pid(previous.pid)
    workdir = path.parent
    if args.secure:
        # Fresh CA, users and passwords on every secured `up`: nothing secret outlives it
        # but the 0600 files in this directory, which `down` deletes.
        workdir = path.parent.parent / "run-secure"
        shutil.rmtree(workdir, ignore_errors=True)
    preferred = [args.port] if args.port else [DEFAULT_PORT, previous.port if previous else None]
    port = choose_port(preferred)
    controller_preferred = [previous.controller_port if previous else None, DEFAULT_PORT + 1]
    controller_port = choose_port(controller_preferred, avoid=[port])
    kafka = LocalKafka(
        args.kafka_version,
        port=port,
        controller_port=controller_port,
        workdir=workdir,
        die_with_parent=False,
        secure=args.secure,
        users=("streamer",),
    )
    try:
        kafka.start()
        if kafka.security is not None:
            env_file = _secure_setup(kafka)
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        kafka.stop()
        return 1
    assert kafka.pid is not None
    # `down` runs in another process: hand it the class archive the JVM records at exit.
    pending, archive = kafka.detach_cds_archive()
    write_state(
        path,
        BrokerState(
            pid=kafka.pid,
            host=kafka.host,
            port=kafka.port,
            controller_port=controller_port,
            workdir=str(workdir),
            version=kafka.version,
            started_at=time.time(),
            cds_pending=str(pending) if pending else None,
            cds_archive=str(archive) if archive else None,
            secure=args.secure,
        ),
    )
    print(
        f"Kafka {kafka.version} started in {kafka.start_seconds:.1f}s "
        f"(pid {kafka.pid}, log {kafka.log_file})"
    )
    if kafka.security is not None:
        print(
            f"secured: SASL_SSL + SCRAM-SHA-512, CA {kafka.security.ca_file}; the service's "
            f"settings (user 'streamer', its ACLs on the default topics and group 'streamer'): "
            f"source {env_file}"
        )
    print(kafka.bootstrap_servers)
    return 0


def _secure_setup(kafka: LocalKafka) -> Path:
    """The default topics, the service user's ACLs on them, its settings in a 0600 file."""
    from streamer.kafka.topics import DEFAULT_TOPICS, ensure_topics, topic_partitions

    security = kafka.security
    assert security is not None
    run_in_fresh_loop(
        lambda: ensure_topics(
            kafka.bootstrap_servers,
            topic_partitions(4),
            client_kwargs=security.client_kwargs(),
        ),
        120.0,
    )
    names = list(DEFAULT_TOPICS)
    inputs = [n for n in names if n.startswith(("search.queries", "search.product-pairs"))]
    security.grant(
        "streamer",
        read=inputs,
        write=[n for n in names if n not in inputs],
        groups=["streamer"],
        transactional_ids=["streamer-"],  # STREAMER_DELIVERY=exactly-once
    )
    env = security.write_env_file(kafka.workdir / "streamer.env", "streamer")
    with open(env, "a") as handle:
        handle.write(f"export STREAMER_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}\n")
    return env


def cmd_status(args: argparse.Namespace) -> int:
    """Say whether the dev broker runs; exit 0 if it does, 1 if not."""
    state = read_state(state_path())
    if state is None or not pid_is_kafka(state.pid):
        print("Kafka not running")
        return 1
    answers = tcp_accepts(state.host, state.port)
    print(
        f"Kafka {state.version} pid {state.pid} "
        f"{'accepting connections' if answers else 'NOT accepting connections'}, "
        f"data {state.workdir}"
    )
    print(state.bootstrap_servers)
    return 0 if answers else 1


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the dev broker (SIGTERM, then SIGKILL); --purge also deletes its data."""
    path = state_path()
    state = read_state(path)
    if state is not None and pid_is_kafka(state.pid):
        started = time.monotonic()
        killed = terminate_pid(state.pid, args.timeout)
        how = "killed" if killed else "stopped"
        if state.cds_pending and state.cds_archive:
            adopt_cds_archive(Path(state.cds_pending), Path(state.cds_archive), not killed)
        print(f"Kafka pid {state.pid} {how} in {time.monotonic() - started:.1f}s")
    else:
        print("Kafka not running")
    path.unlink(missing_ok=True)
    if state is not None and state.secure:
        # The secured broker's CA key, certificates and users' passwords go with it.
        shutil.rmtree(state.workdir, ignore_errors=True)
    if args.purge:
        data = path.parent / "data"
        shutil.rmtree(data, ignore_errors=True)
        print(f"deleted {data}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`up | status | down` for the development broker."""
    parser = argparse.ArgumentParser(
        prog="python -m streamer.kafka.local_broker", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start (or reuse) the broker; last line = bootstrap address")
    up.add_argument("--port", type=int, default=None, help="client port (default 9092 if free)")
    up.add_argument("--kafka-version", default=KAFKA_VERSION)
    up.add_argument(
        "--secure",
        action="store_true",
        help="SASL_SSL + SCRAM users + ACLs (generated CA); prints the settings file to source",
    )
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="is the broker running?")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop the broker; no Java process is left")
    down.add_argument("--purge", action="store_true", help="also delete topics and offsets")
    down.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL")
    down.set_defaults(func=cmd_down)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
