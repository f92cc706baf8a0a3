"""Fault injection for the end-to-end tests: a daemon that can be SIGKILLed, a private PostgreSQL.

`FaultyDeployment` is a `SeparateDeployment` whose daemon can be killed like a crashed host
(SIGKILL to its whole process group: the daemon and the code servers it spawned), whose run
queue can be paused, and whose database may live on another server. `PrivatePostgres` is a
throw-away PostgreSQL cluster in a temporary directory, so a test can restart "the database"
without touching the machine's shared server.
"""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from auto_resume.metaflow.deployment import read_deployment
from tests.e2e.harness import SeparateDeployment
from tests.support import ROOT
from tests.support.processes import free_port, kill_process_group


class FaultyDeployment(SeparateDeployment):
    """A deployment of its own whose daemon can be killed, on ``server_url`` (default: the test server).

    Its workspace serves the ``auto_resume`` code location (with the repo's example flows in
    the policy, as usual) and only the example locations named in ``locations``: each code
    server costs seconds of a 2-core machine at every daemon start.

    Args:
        base: A new directory for ``DAGSTER_HOME``, the workspace, the policy and the daemon's log.
        locations: Example code locations to serve (``linear_flow``, ...), as in workspace.yaml.
        server_url: SQLAlchemy URL of the PostgreSQL server to create the database on.
        paused_queue: Runs the sensor requests stay QUEUED (``max_concurrent_runs: 0``): for
            tests about the sensor alone, without a run worker per resume.
    """

    def __init__(
        self,
        base: Path,
        locations: tuple[str, ...] = (),
        server_url: str | None = None,
        paused_queue: bool = False,
    ) -> None:
        super().__init__(base, server_url)
        self.paused_queue = paused_queue
        self.workspace = base / "workspace.yaml"
        self._locations = locations

    def configure_home(self, home: Path) -> str:
        """The repo's ``dagster.yaml`` (queue paused if asked) and a workspace of the chosen locations."""
        config = (ROOT / "dagster.yaml").read_text()
        if self.paused_queue:
            assert "max_concurrent_runs: 20" in config, "dagster.yaml changed: update FaultyDeployment"
            config = config.replace("max_concurrent_runs: 20", "max_concurrent_runs: 0")
        (home / "dagster.yaml").write_text(config)
        self.workspace.write_text(
            "load_from:\n"
            f"  - python_module:\n      module_name: auto_resume.definitions\n"
            f"      working_directory: {ROOT}\n      location_name: auto_resume\n"
            + "".join(
                f"  - python_file:\n"
                f"      relative_path: {ROOT / 'examples' / 'generated' / (name + '_dagster.py')}\n"
                f"      location_name: {name}\n"
                for name in self._locations
            )
        )
        return str(self.workspace)

    def launch(self, location: str, job: str, config: dict[str, object]) -> str:
        """Submit a run of a metaflow-dagster ``job`` (config for its start op); its run id."""
        assert self.deployment is not None
        return self.deployment.launch(location, job, config)

    def daemon_alive(self) -> bool:
        return self._daemon is not None and self._daemon.poll() is None

    def kill_daemon(self) -> None:
        """SIGKILL the daemon's process group, as a host crash or the OOM killer would: no clean-up."""
        if self._daemon is None:
            return
        kill_process_group(self._daemon)
        self._daemon = None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own, in a temporary directory, on a free local port.

    Created with ``initdb`` as the ``postgres`` OS user (PostgreSQL refuses to run as root),
    trust authentication, listening on 127.0.0.1 only. Use as a context manager: the cluster
    is stopped and its directory removed on the way out, whatever happened inside.
    """

    def __init__(self) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin = found[-1].parent
        self.directory = Path(tempfile.mkdtemp(prefix="auto-resume-pg-", dir="/tmp"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["runuser", "-u", "postgres", "--", str(self.bin / command[0]), *command[1:]]
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def _pg_ctl(self, action: str, *options: str) -> None:
        self._as_postgres(
            "pg_ctl", action, "-D", str(self.data), "-l", str(self.directory / "server.log"), "-w", *options
        )

    def __enter__(self) -> "PrivatePostgres":
        try:
            shutil.chown(self.directory, "postgres", "postgres")
            self.directory.chmod(0o755)
            self._as_postgres("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
            settings = (
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\nfsync = off\nmax_connections = 200\n"
            )
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(settings)
            self._pg_ctl("start")
        except BaseException:
            self.__exit__()
            raise
        return self

    def restart(self) -> None:
        """Restart the server (fast shutdown: every open connection is cut, as on a failover)."""
        self._pg_ctl("restart", "-m", "fast")

    def log_tail(self) -> str:
        log = self.directory / "server.log"
        return log.read_text()[-3000:] if log.exists() else ""

    def __exit__(self, *exc_info: object) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


def _datastore_root(definitions: str) -> Path:
    deployment = read_deployment(ROOT / "examples" / "generated" / definitions)
    root = deployment.top_arg("datastore-root")
    assert root, f"{definitions} names no --datastore-root"
    return Path(root)


def origin_task_dir(flow_name: str, run_id: str, step: str, task_id: str = "1") -> Path:
    """The local-datastore directory of one task of an example flow's run (attempt files, index)."""
    definitions = {"LinearFlow": "linear_flow_dagster.py"}[flow_name]
    return _datastore_root(definitions) / flow_name / run_id / step / task_id


def artifact_blob(flow_name: str, run_id: str, step: str, artifact: str, task_id: str = "1") -> Path:
    """The content-addressed file holding one artifact of a task (shared by runs with equal values)."""
    index = json.loads((origin_task_dir(flow_name, run_id, step, task_id) / "0.data.json").read_text())
    key = index["objects"][artifact]
    return origin_task_dir(flow_name, run_id, step, task_id).parents[2] / "data" / key[:2] / key
