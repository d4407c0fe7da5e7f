"""Apache Kafka brokers from Maven Central: fetched once per machine, started on free ports.

Two kinds, each a single node with its own data folder:

- ``kafka-zk``: Kafka 3.4 (the broker of docker-compose.yml's Confluent Platform 7.4) in
  ZooKeeper mode, with the compose file's broker settings (:data:`COMPOSE_BROKER_SETTINGS`);
- ``kafka-kraft``: the newest Kafka 4.x in KRaft mode, one process as broker and controller.

The jars are resolved with Maven (``mvn dependency:copy-dependencies`` on a generated pom) into
``$USER_ACTIVITY_KAFKA_CACHE/<version>``
(default ``${XDG_CACHE_HOME:-~/.cache}/user-activity-kafka``),
once per machine; later starts reuse them. Maven's own cache is ``~/.m2``.

Synopsis::

    broker = start_kafka("kafka-kraft", data_dir=tmp_path / "kafka")   # answers metadata
    broker.bootstrap_servers                                           # "127.0.0.1:PORT"
    broker.stop_kafka(signal.SIGKILL); broker.start_kafka()            # same port, same log
    broker.close()                               # Kafka, then ZooKeeper; data folder removed

``python -m tests.support.apache_kafka KIND`` (``scripts/kafka-broker``) runs one until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import attrs
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from actors.devtools.local_broker import free_port

__all__ = [
    "COMPOSE_BROKER_SETTINGS",
    "COMPOSE_ZOOKEEPER_SETTINGS",
    "KINDS",
    "KRAFT_BROKER_SETTINGS",
    "KRAFT_DISTRIBUTION",
    "TEST_ONLY_SETTINGS",
    "ZK_DISTRIBUTION",
    "Distribution",
    "KafkaBroker",
    "KafkaBrokerError",
    "broker_settings",
    "cache_root",
    "cluster_id_from",
    "fetch",
    "start_kafka",
    "wait_ready",
]


@attrs.frozen
class Distribution:
    """One Kafka version from Maven Central and the logging binding its broker needs."""

    version: str
    #: ``group:artifact:version`` resolved beside ``org.apache.kafka:kafka_2.13``.
    logging: tuple[str, ...]
    #: ``log4j`` (1.x API, reload4j: Kafka 3.x) or ``log4j2`` (Kafka 4.x).
    log_config: str


#: Kafka 3.4 is the Apache Kafka of Confluent Platform 7.4 (docker-compose.yml); its dependencies
#: include the ZooKeeper server. Kafka 4.x has no ZooKeeper mode.
ZK_DISTRIBUTION = Distribution(
    version="3.4.1", logging=("org.slf4j:slf4j-reload4j:1.7.36",), log_config="log4j"
)
KRAFT_DISTRIBUTION = Distribution(
    version="4.4.0",
    logging=(
        "org.slf4j:slf4j-api:2.0.17",
        "org.apache.logging.log4j:log4j-slf4j2-impl:2.25.5",
    ),
    log_config="log4j2",
)

#: The broker kinds, by the name ``TEST_BROKER`` uses.
KINDS: Mapping[str, Distribution] = {"kafka-zk": ZK_DISTRIBUTION, "kafka-kraft": KRAFT_DISTRIBUTION}

#: docker-compose.yml's Kafka service settings (its KAFKA_* variables) as server.properties keys.
#: Addresses are templates filled with this broker's own ports: the compose file's two listeners
#: (PLAINTEXT for containers, PLAINTEXT_HOST for the host) both listen on 127.0.0.1 here, and
#: clients bootstrap from PLAINTEXT_HOST as host tools do there. tests/static/test_kafka_brokers.py
#: keeps this table and the compose file in step.
COMPOSE_BROKER_SETTINGS: Mapping[str, str] = {
    "broker.id": "1",
    "zookeeper.connect": "127.0.0.1:{zookeeper_port}",
    "listeners": "PLAINTEXT://127.0.0.1:{internal_port},PLAINTEXT_HOST://127.0.0.1:{port}",
    "advertised.listeners": (
        "PLAINTEXT://127.0.0.1:{internal_port},PLAINTEXT_HOST://127.0.0.1:{advertised_port}"
    ),
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,PLAINTEXT_HOST:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
}

#: The compose file's ZooKeeper settings (ZOOKEEPER_CLIENT_PORT, ZOOKEEPER_TICK_TIME).
COMPOSE_ZOOKEEPER_SETTINGS: Mapping[str, str] = {
    "clientPort": "{zookeeper_port}",
    "tickTime": "2000",
}

#: The KRaft broker: the compose file's group and replication settings on one combined
#: broker+controller node (KRaft has no ZooKeeper and no inter-broker listener of its own here).
KRAFT_BROKER_SETTINGS: Mapping[str, str] = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.quorum.voters": "1@127.0.0.1:{controller_port}",
    "controller.listener.names": "CONTROLLER",
    "listeners": "PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
    "advertised.listeners": "PLAINTEXT://127.0.0.1:{advertised_port}",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
}

#: Broker settings that only the tests use, on both kinds, each because of what it speeds up.
TEST_ONLY_SETTINGS: Mapping[str, str] = {
    # The suite's services run with session.timeout.ms=1000 (FAST_SETTINGS in services.py) so
    # that a killed member is replaced in about a second; Kafka's default minimum (6000) would
    # refuse that JoinGroup with INVALID_SESSION_TIMEOUT.
    "group.min.session.timeout.ms": "500",
    # __consumer_offsets is created on the first FindCoordinator: 50 partitions (the default)
    # take seconds to create on a 2-core machine, one is enough for one broker.
    "offsets.topic.num.partitions": "1",
    # A SIGKILLed ZooKeeper-mode broker leaves its registration (an ephemeral znode) until its
    # ZooKeeper session expires, and a restart before that exits ("node already exists"): 6 s
    # instead of 18 s. ZooKeeper mode only.
    "zookeeper.session.timeout.ms": "6000",
    # The same for KRaft: a SIGKILLed broker's registration stays until its broker session
    # expires, and the restarted one is refused until then: 3 s instead of 9 s (the heartbeat
    # below a third of that). KRaft only.
    "broker.session.timeout.ms": "3000",
    "broker.heartbeat.interval.ms": "500",
}

#: The keys of TEST_ONLY_SETTINGS that one kind does not know (it would log a warning).
_NOT_FOR = {
    "kafka-zk": {"broker.session.timeout.ms", "broker.heartbeat.interval.ms"},
    "kafka-kraft": {"zookeeper.session.timeout.ms"},
}

#: The JVM of each process: small heaps (the machines have 2 cores and a few GB).
KAFKA_JVM = ("-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true")
ZOOKEEPER_JVM = ("-Xms16m", "-Xmx128m", "-XX:+UseSerialGC")

#: How long a broker may take from spawn to a metadata answer (JVM start, log recovery).
READY_TIMEOUT = 90.0


class KafkaBrokerError(RuntimeError):
    """The jars could not be fetched, or a broker did not come up."""


def cache_root() -> Path:
    """Where the jars of each version are kept, one folder per version."""
    configured = os.environ.get("USER_ACTIVITY_KAFKA_CACHE", "").strip()
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "user-activity-kafka"


def _pom(distribution: Distribution) -> str:
    coordinates = [f"org.apache.kafka:kafka_2.13:{distribution.version}", *distribution.logging]
    dependencies = "\n".join(
        "    <dependency><groupId>{}</groupId><artifactId>{}</artifactId>"
        "<version>{}</version></dependency>".format(*coordinate.split(":"))
        for coordinate in coordinates
    )
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.user-activity</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>{distribution.version}</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""


def fetch(distribution: Distribution, *, quiet: bool = True) -> Path:
    """The folder of the broker's jars, resolved from Maven Central on the first call.

    Concurrent callers (two test runs) wait for one another on a lock file; a fetch that fails
    leaves nothing behind but the lock.

    Raises:
        KafkaBrokerError: Maven is missing or could not resolve the jars.
    """
    folder = cache_root() / distribution.version
    jars = folder / "libs"
    done = folder / "complete"
    if done.exists():
        return jars
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return jars
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaBrokerError("Maven (mvn) is not installed: apt-get install maven")
        shutil.rmtree(jars, ignore_errors=True)
        (folder / "pom.xml").write_text(_pom(distribution))
        result = subprocess.run(
            [
                mvn,
                *(["-q"] if quiet else []),
                "-B",
                "-Dstyle.color=never",
                "-f",
                str(folder / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={jars}",
            ],
            capture_output=quiet,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not any(jars.glob("kafka_2.13-*.jar")):
            shutil.rmtree(jars, ignore_errors=True)
            raise KafkaBrokerError(
                f"mvn could not resolve Kafka {distribution.version} (exit {result.returncode}):"
                f"\n{(result.stdout or '')[-3000:]}"
            )
        done.write_text(f"{distribution.version}\n")
    return jars


def _properties(settings: Mapping[str, str]) -> str:
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _log_config(distribution: Distribution, log_file: Path) -> tuple[str, str]:
    """The JVM flag that names a logging configuration, and that file's text: INFO and above,
    to ``log_file`` only (nothing on the terminal)."""
    if distribution.log_config == "log4j":
        return "-Dlog4j.configuration=file:{path}", (
            "log4j.rootLogger=INFO, file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={log_file}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )
    return "-Dlog4j2.configurationFile={path}", (
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = file\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = file\n"
    )


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaBrokerError("Java is not installed: apt-get install default-jre-headless")
    return java


def wait_ready(bootstrap_servers: str, *, timeout: float, alive: Callable[[], bool]) -> None:
    """Poll ``list_topics()`` until a broker with at least one registered broker answers.

    Raises:
        KafkaBrokerError: the process exited, or ``timeout`` passed without an answer.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise KafkaBrokerError("the broker process exited before it answered")
        try:
            metadata = admin.list_topics(timeout=1)
        except KafkaException as error:
            last = str(error)
        else:
            if metadata.brokers:
                return
            last = "metadata without brokers"
        time.sleep(0.1)
    raise KafkaBrokerError(f"no metadata from {bootstrap_servers} within {timeout:g} s: {last}")


@attrs.define
class KafkaBroker:
    """One Apache Kafka node (and its ZooKeeper) that this process started."""

    kind: str
    distribution: Distribution
    jars: Path
    data_dir: Path
    log_dir: Path
    port: int
    advertised_port: int
    kafka: subprocess.Popen[bytes] | None = None
    zookeeper: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def log_file(self) -> Path:
        """The broker's own log (ZooKeeper's is ``zookeeper.log`` beside it)."""
        return self.log_dir / f"{self.kind}.log"

    def _spawn(
        self, main: str, config: Path, jvm: tuple[str, ...], log: Path
    ) -> subprocess.Popen[bytes]:
        flag, text = _log_config(self.distribution, log)
        log_config = log.with_suffix(".logging.properties")
        log_config.write_text(text)
        with log.with_suffix(".out").open("ab") as output:
            return subprocess.Popen(
                [
                    _java(),
                    *jvm,
                    flag.format(path=log_config),
                    "-cp",
                    f"{self.jars}/*",
                    main,
                    str(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the script, not the JVM
            )

    def alive(self) -> bool:
        return self.kafka is not None and self.kafka.poll() is None

    def start_kafka(self, *, timeout: float = READY_TIMEOUT) -> None:
        """Start (or start again, on the same port and log) the Kafka process; wait for it.

        A ZooKeeper-mode broker that was killed cannot register until its old ZooKeeper
        session expires (``zookeeper.session.timeout.ms``): it exits, and is started again.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.kafka = self._spawn(
                "kafka.Kafka", self.data_dir / "server.properties", KAFKA_JVM, self.log_file
            )
            self.starts += 1
            try:
                wait_ready(
                    self.bootstrap_servers,
                    timeout=max(deadline - time.monotonic(), 1.0),
                    alive=self.alive,
                )
            except KafkaBrokerError:
                if self.kafka.poll() is not None and time.monotonic() < deadline - 5:
                    time.sleep(1.0)  # e.g. the old registration still in ZooKeeper
                    continue
                self.stop_kafka(signal.SIGKILL)
                raise
            return

    def stop_kafka(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send ``sig`` to the Kafka process and wait for it to exit (SIGKILL after
        ``timeout``); returns the exit code, ``None`` when it was not running."""
        process = self.kafka
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
                process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def close(self) -> None:
        """Stop Kafka, then ZooKeeper, and remove the data folder; never raises."""
        self.stop_kafka()
        if self.zookeeper is not None and self.zookeeper.poll() is None:
            self.zookeeper.terminate()
            try:
                self.zookeeper.wait(15)
            except subprocess.TimeoutExpired:
                self.zookeeper.kill()
                self.zookeeper.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def broker_settings(kind: str, *, data_dir: Path, ports: Mapping[str, int]) -> dict[str, str]:
    """The whole server.properties of a broker of ``kind`` (templates filled with ``ports``)."""
    table = COMPOSE_BROKER_SETTINGS if kind == "kafka-zk" else KRAFT_BROKER_SETTINGS
    settings = {key: value.format(**ports) for key, value in table.items()}
    settings |= {
        key: value for key, value in TEST_ONLY_SETTINGS.items() if key not in _NOT_FOR[kind]
    }
    settings["log.dirs"] = str(data_dir / "kafka-logs")
    return settings


def start_kafka(
    kind: str,
    *,
    data_dir: Path | None = None,
    log_dir: Path | None = None,
    port: int | None = None,
    advertised_port: int | None = None,
    timeout: float = READY_TIMEOUT,
) -> KafkaBroker:
    """Fetch (once) and start a fresh broker of ``kind`` on free ports; returns once it answers
    a metadata request.

    Args:
        kind: ``kafka-zk`` or ``kafka-kraft``.
        data_dir: a folder of its own (created; removed by :meth:`KafkaBroker.close`); a new
            temporary folder by default.
        log_dir: where the logs go (kept after close); ``data_dir`` by default.
        port: the client port (``PLAINTEXT_HOST`` in ZooKeeper mode); a free one by default.
        advertised_port: the port clients are told to connect to (a proxy in front of the
            broker); the broker's own port by default.

    Raises:
        KafkaBrokerError: the jars could not be fetched, or the broker did not come up (what
            it started is stopped again).
    """
    distribution = KINDS[kind]
    jars = fetch(distribution)
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir = log_dir or data_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    ports = {
        "port": port,
        "advertised_port": advertised_port or port,
        "internal_port": free_port(),
        "controller_port": free_port(),
        "zookeeper_port": free_port(),
    }
    broker = KafkaBroker(
        kind=kind,
        distribution=distribution,
        jars=jars,
        data_dir=data_dir,
        log_dir=log_dir,
        port=port,
        advertised_port=ports["advertised_port"],
    )
    config = data_dir / "server.properties"
    config.write_text(_properties(broker_settings(kind, data_dir=data_dir, ports=ports)))
    started = False
    try:
        if kind == "kafka-zk":
            zk_config = data_dir / "zookeeper.properties"
            zk_settings = {
                key: value.format(**ports) for key, value in COMPOSE_ZOOKEEPER_SETTINGS.items()
            }
            zk_settings |= {"dataDir": str(data_dir / "zookeeper"), "admin.enableServer": "false"}
            zk_config.write_text(_properties(zk_settings))
            broker.zookeeper = broker._spawn(
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                zk_config,
                ZOOKEEPER_JVM,
                log_dir / f"{kind}-zookeeper.log",
            )
        else:
            _format_storage(broker, config)
        broker.start_kafka(timeout=timeout)
        started = True
    finally:
        if not started:  # whatever went wrong (Ctrl-C too): stop what was started
            broker.close()
    return broker


def cluster_id_from(candidates: Iterable[bytes]) -> str:
    """A base64url UUID without padding, as ``kafka-storage random-uuid`` prints it: the first
    candidate whose text does not start with ``-`` (Kafka's ``Uuid.randomUuid`` skips those too;
    the tool's argument parser would read one as an option)."""
    for candidate in candidates:
        text = base64.urlsafe_b64encode(candidate).decode().rstrip("=")
        if not text.startswith("-"):
            return text
    raise ValueError("no candidate cluster id")


def _format_storage(broker: KafkaBroker, config: Path) -> None:
    """``kafka-storage format``: a KRaft node's log folder needs a cluster id before start."""
    cluster_id = cluster_id_from(uuid.uuid4().bytes for _ in itertools.count())
    result = subprocess.run(
        [
            _java(),
            "-Xmx256m",
            "-cp",
            f"{broker.jars}/*",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise KafkaBrokerError(f"kafka-storage format failed:\n{result.stdout}{result.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/kafka-broker",
        description="Fetch (once, into the cache) and run an Apache Kafka broker on a free "
        "port until Ctrl-C; prints its bootstrap address.",
    )
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--fetch-only", action="store_true", help="fetch the jars and exit")
    parser.add_argument("--data-dir", type=Path, help="data folder (default: a new temp one)")
    args = parser.parse_args(argv)
    distribution = KINDS[args.kind]
    started = time.monotonic()
    try:
        jars = fetch(distribution, quiet=False)
    except KafkaBrokerError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"Kafka {distribution.version} jars in {jars} ({time.monotonic() - started:.1f} s)")
    if args.fetch_only:
        return 0
    try:
        broker = start_kafka(args.kind, data_dir=args.data_dir)
    except KafkaBrokerError as error:
        print(error, file=sys.stderr)
        return 1
    try:
        print(
            f"{args.kind} (Kafka {distribution.version}) at {broker.bootstrap_servers}, ready "
            f"after {time.monotonic() - started:.1f} s; log {broker.log_file}; Ctrl-C stops it",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while broker.alive():
                time.sleep(0.5)
    finally:
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
