"""A real single-node SLURM cluster (slurmctld + slurmd + a private munged) for the test suite.

The session-scoped fixture `slurm_cluster` writes a slurm.conf into a fresh temporary directory,
starts the three daemons in the foreground as children of the test process, waits until the node
is idle, and exports `SLURM_CONF` so that sbatch/squeue/scontrol and submitit talk to it. On
teardown it cancels every job, stops the daemons it started, and kills any job process the
cluster left behind. munged gets its own key and socket (`AuthInfo=socket=...`), so a munged the
machine may already run is neither used nor disturbed, and two test sessions can run side by
side (each cluster also picks free ports).

The daemons need root and Debian's slurm-wlm and munge (installed by scripts/install_slurm.sh,
which the fixture runs when they are missing). When the cluster cannot be started the fixture
fails with one clear line and the daemon log tails: a SLURM test that silently skips proves
nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_slurm.sh"
REQUIRED_COMMANDS = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "squeue", "srun")
# Debian puts the daemons in /usr/sbin, which a non-login PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0

# Timers are short so that tests do not wait on SLURM's production defaults:
# - KillWait: seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or preempted
#   (production default 30 s).
# - cred_expire: a requeued job is held (Reason=BeginTime) for cred_expire + 1 seconds before it
#   may start again (default 120 s).
# - sched_interval/bf_interval: the scheduler loops run every second, so a job whose begin time
#   has passed starts within a second instead of up to a minute.
# - MinJobAge: finished jobs stay visible to squeue/scontrol for 30 s, long enough for tests to
#   read their final state (there is no accounting database, hence no sacct).
# Jobs in the higher-tier partition preempt (requeue) jobs in the default one, as on a shared
# production cluster. JobRequeue=0, as many sites set it: only jobs submitted with --requeue may
# be requeued.
SLURM_CONF_TEMPLATE = """\
ClusterName=graftbench
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=2
MinJobAge=30
JobRequeue=0
MessageTimeout=5
InactiveLimit=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName={urgent_partition} Nodes={node} MaxTime=INFINITE State=UP PriorityTier=2
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
"""


@dataclass(frozen=True)
class SlurmCluster:
    """A running single-node cluster.

    `env` is a full environment (the test process's, with `SLURM_CONF` set) to pass to
    subprocesses; `os.environ` carries the same `SLURM_CONF` while the cluster is up.
    A job submitted to `urgent_partition` preempts (requeues) jobs of the default `partition`
    that hold the CPUs it needs.
    """

    root: Path
    conf: Path
    node: str
    cpus: int
    env: dict[str, str]
    partition: str = "main"
    urgent_partition: str = "urgent"

    def run(self, *args: str, check: bool = True) -> str:
        """Run a SLURM client command (squeue, scontrol, ...) against this cluster; stdout."""
        done = subprocess.run(
            args, env=self.env, capture_output=True, text=True, timeout=30, check=False
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}"
            )
        return done.stdout

    def job_state(self, job_id: str) -> str:
        """SLURM's state of a job (RUNNING, PENDING, COMPLETED, ...); "" once it is forgotten."""
        out = self.run("squeue", "-h", "--states=all", "-j", job_id, "-o", "%T", check=False)
        return out.strip().splitlines()[0] if out.strip() else ""

    def active_job_ids(self) -> list[str]:
        """Ids of the jobs (and array tasks) that are not finished yet."""
        return self.run("squeue", "-h", "-r", "-o", "%i").split()

    def log_tails(self) -> str:
        """The last lines of every daemon log, for failure messages."""
        return _log_tails(self.root)


class SlurmStartError(RuntimeError):
    """The cluster could not be installed or started; the message says why in one line."""


def _log_tails(root: Path, lines: int = 15) -> str:
    parts = []
    for path in sorted((root / "log").glob("*")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(parts)


def _which(cmd: str) -> str | None:
    return shutil.which(cmd, path=SEARCH_PATH)


def _ensure_installed() -> None:
    if all(_which(cmd) for cmd in REQUIRED_COMMANDS):
        return
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    missing = [cmd for cmd in REQUIRED_COMMANDS if not _which(cmd)]
    if done.returncode != 0 or missing:
        output = done.stderr.strip().splitlines() or [f"{', '.join(missing)} still missing"]
        raise SlurmStartError(f"{INSTALL_SCRIPT.name}: {output[-1]}\n" + "\n".join(output[-20:-1]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    """RealMemory to declare: slurmd drains a node that declares more than it has."""
    total_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    return int(total_mb * 0.9)


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _leftover_pids(conf: Path) -> list[int]:
    """Processes (job steps, their children) whose environment points at this cluster."""
    marker = b"SLURM_CONF=" + bytes(conf) + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if marker in environ:
            pids.append(int(entry.name))
    return pids


class _Daemons:
    """Starts munged, slurmctld and slurmd in `root`; `stop()` undoes exactly that."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []
        self.cluster: SlurmCluster | None = None

    def start(self) -> SlurmCluster:
        root = self.root
        for sub in ("state", "spool", "log", "munge"):
            (root / sub).mkdir()
        # munged insists that every directory above its socket be searchable by all.
        root.chmod(0o755)
        munge_socket = root / "munge" / "munge.socket"
        key = root / "munge" / "munge.key"
        self._check_call(["mungekey", "--create", f"--keyfile={key}"])
        node = socket.gethostname().split(".")[0]
        cpus = len(os.sched_getaffinity(0))  # what nproc says
        conf = root / "slurm.conf"
        conf.write_text(
            SLURM_CONF_TEMPLATE.format(
                root=root,
                node=node,
                cpus=cpus,
                memory_mb=_memory_mb(),
                partition=SlurmCluster.partition,
                urgent_partition=SlurmCluster.urgent_partition,
                ctld_port=_free_port(),
                slurmd_port=_free_port(),
                munge_socket=munge_socket,
            )
        )
        env = {**os.environ, "SLURM_CONF": str(conf)}
        log = root / "log"
        self.procs.append(
            _spawn(
                [
                    _which_or_fail("munged"),
                    "--foreground",
                    "--force",
                    f"--socket={munge_socket}",
                    f"--key-file={key}",
                    f"--pid-file={root / 'munge' / 'munged.pid'}",
                    f"--seed-file={root / 'munge' / 'munged.seed'}",
                    f"--log-file={log / 'munged.log'}",
                ],
                log / "munged.out",
                env,
            )
        )
        self._wait_for(munge_socket.exists, "munged did not create its socket")
        self.procs.append(
            _spawn([_which_or_fail("slurmctld"), "-D", "-f", str(conf)], log / "ctld.out", env)
        )
        self.procs.append(
            _spawn([_which_or_fail("slurmd"), "-D", "-f", str(conf)], log / "slurmd.out", env)
        )
        self.cluster = SlurmCluster(root=root, conf=conf, node=node, cpus=cpus, env=env)
        self._wait_for(self._node_idle, f"node {node} did not become idle")
        return self.cluster

    def _node_idle(self) -> bool:
        assert self.cluster is not None
        out = self.cluster.run("sinfo", "-h", "-n", self.cluster.node, "-o", "%T", check=False)
        return out.strip() == "idle"

    def _wait_for(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                name = Path(str(dead[0].args[0])).name
                raise SlurmStartError(f"{name} exited with status {dead[0].returncode}")
            if ready():
                return
            time.sleep(0.2)
        raise SlurmStartError(f"{what} within {START_TIMEOUT_S:.0f} s")

    def _check_call(self, args: list[str]) -> None:
        args = [_which_or_fail(args[0]), *args[1:]]
        done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise SlurmStartError(f"{' '.join(args)} failed: {done.stderr.strip()}")

    def stop(self) -> None:
        """Cancel all jobs, stop slurmd, slurmctld and munged, kill any job left running."""
        if self.cluster is not None and self.procs and self.procs[-1].poll() is None:
            self._cancel_all_jobs(self.cluster)
        for proc in reversed(self.procs):
            _stop(proc)
        if self.cluster is not None:
            for pid in _leftover_pids(self.cluster.conf):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _cancel_all_jobs(cluster: SlurmCluster) -> None:
        try:
            jobs = cluster.active_job_ids()
            if jobs:
                cluster.run("scancel", *jobs, check=False)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while cluster.active_job_ids() and time.monotonic() < deadline:
                time.sleep(0.5)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the daemons are stopped next, and leftovers killed after that


def _which_or_fail(cmd: str) -> str:
    path = _which(cmd)
    if path is None:
        raise SlurmStartError(f"{cmd} not found")
    return path


def _bring_up(daemons: _Daemons) -> str | None:
    """Install if needed and start the cluster; None on success, else why not."""
    if os.geteuid() != 0:
        return "SLURM tests need root: slurmd must run as root to launch jobs"
    try:
        _ensure_installed()
        daemons.start()
    except (SlurmStartError, RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        return f"cannot start the SLURM test cluster: {error}\n{_log_tails(daemons.root)}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running single-node SLURM cluster, with `SLURM_CONF` exported in `os.environ`.

    Fails (never skips) every test that uses it when the cluster cannot be started.
    """
    daemons = _Daemons(Path(tempfile.mkdtemp(prefix="graftbench-slurm-")))
    previous_conf = os.environ.get("SLURM_CONF")
    try:
        reason = _bring_up(daemons)
        if reason is not None or daemons.cluster is None:
            pytest.fail(reason or "the SLURM test cluster did not start", pytrace=False)
        os.environ["SLURM_CONF"] = str(daemons.cluster.conf)
        yield daemons.cluster
    finally:
        daemons.stop()
        if previous_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous_conf
        shutil.rmtree(daemons.root, ignore_errors=True)
