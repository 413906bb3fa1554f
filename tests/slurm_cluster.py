"""A real one-node SLURM cluster on this machine, for the tests: munge, slurmctld and slurmd.

The daemons run as root with their state, spool, logs and pid files in a temporary folder, and
are stopped by their pid files. slurm.conf must live at /etc/slurm/slurm.conf: the executor
plugin's jobstep strips SLURM_CONF from the environment before it calls srun. A slurm.conf
that this module did not write (a real cluster's) is never touched: the tests skip instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_ETC = Path("/etc/slurm")
SLURM_CONF = SLURM_ETC / "slurm.conf"
GRES_CONF = SLURM_ETC / "gres.conf"
# First line of the files this module writes: only such files may be overwritten or removed.
OWN_MARKER = "# written by mindreader tests/slurm_cluster.py (a throw-away test cluster)\n"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
# Seconds a killed job's processes get between SIGTERM and SIGKILL (SLURM's default is 30).
KILL_WAIT_S = 10
# Ports away from SLURM's defaults (6817/6818), so a test cluster never answers a real one.
CTLD_PORT = 6917
SLURMD_PORT = 6918


def unavailable_reason() -> str | None:
    """Why a test cluster cannot run here, or None when it can."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} missing): "
            "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        return "the SLURM daemons of the test cluster must be started as root"
    for path in (SLURM_CONF, GRES_CONF):
        if path.exists() and not path.read_text().startswith(OWN_MARKER):
            return f"{path} belongs to a real SLURM installation; not overwriting it"
    return None


def _slurm_conf(host: str, state: Path, cpus: int, memory_mb: int) -> str:
    return OWN_MARKER + "\n".join(
        [
            "ClusterName=mindreader-test",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={CTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "ReturnToService=2",
            # squeue is the status command without accounting: finished jobs must stay visible to
            # it for a while (>= 3 x slurm-init-seconds-before-status-checks; here: the whole test).
            "MinJobAge=3600",
            f"KillWait={KILL_WAIT_S}",
            "GresTypes=gpu",
            f"StateSaveLocation={state}/ctld",
            f"SlurmdSpoolDir={state}/spool",
            f"SlurmctldLogFile={state}/slurmctld.log",
            f"SlurmdLogFile={state}/slurmd.log",
            f"SlurmctldPidFile={state}/slurmctld.pid",
            f"SlurmdPidFile={state}/slurmd.pid",
            f"NodeName={host} CPUs={cpus} RealMemory={memory_mb} Gres=gpu:fake:1 State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _total_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("/proc/meminfo has no MemTotal line")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_by_pid_file(pid_file: Path, timeout_s: float = 15) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text().split()[0])
    if not _pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _wait_for(predicate, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def _munge_works() -> bool:
    credential = subprocess.run(["munge", "-n"], capture_output=True)
    if credential.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=credential.stdout, capture_output=True).returncode == 0


class LocalSlurm:
    """One-node SLURM (partition "debug", one fake GPU) whose files all live under ``state``."""

    def __init__(self, state: Path):
        self.state = state
        self.host = socket.gethostname().split(".")[0]
        self.pid_files: list[Path] = []

    def start(self) -> None:
        (self.state / "ctld").mkdir(parents=True, exist_ok=True)
        (self.state / "spool").mkdir(parents=True, exist_ok=True)
        self._start_munge()
        SLURM_ETC.mkdir(parents=True, exist_ok=True)
        memory_mb = int(_total_memory_mb() * 0.8)
        SLURM_CONF.write_text(_slurm_conf(self.host, self.state, os.cpu_count() or 1, memory_mb))
        GRES_CONF.write_text(OWN_MARKER + f"NodeName={self.host} Name=gpu Type=fake File=/dev/null\n")
        subprocess.run(["slurmctld"], check=True)
        self.pid_files.append(self.state / "slurmctld.pid")
        subprocess.run(["slurmd"], check=True)
        self.pid_files.append(self.state / "slurmd.pid")
        _wait_for(self._node_idle, 30, "the node to become idle", self.state / "slurmd.log")

    def _start_munge(self) -> None:
        if _munge_works():
            return  # a munged is already running (a system service): use it, leave it alone
        if not MUNGE_KEY.exists():
            subprocess.run(["mungekey", "--create"], check=True)
            shutil.chown(MUNGE_KEY, "munge", "munge")
        for folder in (MUNGE_RUN, Path("/var/log/munge"), Path("/var/lib/munge")):
            folder.mkdir(parents=True, exist_ok=True)
            shutil.chown(folder, "munge", "munge")
        pid_file = MUNGE_RUN / "munged.pid"
        subprocess.run(["runuser", "-u", "munge", "--", "munged", f"--pid-file={pid_file}"], check=True)
        self.pid_files.append(pid_file)
        _wait_for(_munge_works, 10, "munged to answer")

    def _node_idle(self) -> bool:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True)
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def cancel_jobs(self, timeout_s: float = 60) -> None:
        """Cancel every job and wait until none is running: slurmd's job steps outlive slurmd."""
        listing = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
        job_ids = listing.stdout.split()
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True)

        def none_active() -> bool:
            active = subprocess.run(["squeue", "-h", "-t", "PD,R,CG,S"], capture_output=True, text=True)
            return active.returncode == 0 and not active.stdout.strip()

        _wait_for(none_active, timeout_s, "the cancelled jobs to end", self.state / "slurmd.log")

    def stop(self) -> None:
        if self.pid_files:
            self.cancel_jobs()
        for pid_file in reversed(self.pid_files):
            _stop_by_pid_file(pid_file)
        self.pid_files.clear()
        for path in (SLURM_CONF, GRES_CONF):
            if path.exists() and path.read_text().startswith(OWN_MARKER):
                path.unlink()
