"""A private one-node Slurm cluster (``slurmctld`` + ``slurmd``) in a temporary directory, for the tests.

Debian's ``slurmctld``, ``slurmd`` and ``slurm-client`` packages (``apt-get install -y --no-install-recommends
slurmctld slurmd slurm-client``). No munge: ``AuthType=auth/none`` and ``CredType=cred/none`` (test-only
plugins that trust every request), no cgroups (``proctrack/linuxproc``, ``task/none``), no accounting.
The daemons listen on free local ports and keep all state under the directory; clients find the cluster
through ``SLURM_CONF``. Runs as root (slurmd starts jobs as their user).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
INSTALL = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client"


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    """Start with ``start()``, stop with ``stop()``; ``env`` is what a client process needs."""

    def __init__(self, root: Path, cpus: int = 2, kill_wait_s: int = 10):
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.cpus = cpus
        self.kill_wait_s = kill_wait_s
        self.daemons: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "root")
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=animatextest",
                    f"SlurmctldHost={self.node}(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "AuthType=auth/none",
                    "CredType=cred/none",
                    f"SlurmUser={user}",
                    f"SlurmdUser={user}",
                    f"StateSaveLocation={self.root / 'state'}",
                    f"SlurmdSpoolDir={self.root / 'spool'}",
                    f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
                    f"SlurmdPidFile={self.root / 'slurmd.pid'}",
                    f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "SchedulerType=sched/builtin",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    "JobRequeue=1",
                    f"KillWait={self.kill_wait_s}",
                    "MinJobAge=3600",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "SlurmctldDebug=info",
                    "SlurmdDebug=info",
                    f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
                    f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                ]
            )
            + "\n"
        )

    def start(self, timeout: float = 60) -> None:
        self._write_conf()
        env = {**os.environ, **self.env}
        for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", self.node]):
            log = (self.root / "log" / f"{daemon[0]}.stdout").open("w")
            self.daemons.append(
                subprocess.Popen(
                    [*daemon, "-f", str(self.conf)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.strip()
            if state.startswith("idle"):
                return
            if any(d.poll() is not None for d in self.daemons):
                break
            time.sleep(0.5)
        raise RuntimeError(f"the test Slurm cluster did not come up (node state {state!r}):\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.root / "log").glob("*")))

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, env={**os.environ, **self.env}, capture_output=True, text=True, check=check, timeout=60
        )

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (``JobState``, ``Restarts``, ``ExitCode``, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", job_id]).stdout
        return dict(token.split("=", 1) for token in out.split() if "=" in token)

    def wait_for(self, job_id: str, predicate, what: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if predicate(job):
                return job
            if job.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
                raise AssertionError(f"job {job_id} ended {job['JobState']} while waiting for {what}: {job}")
            time.sleep(0.5)
        raise AssertionError(f"job {job_id}: {what} not within {timeout} s: {self.job(job_id)}\n{self.logs()}")

    def stop(self) -> None:
        """Cancel what still runs, then stop our two daemons (by their pids) and wait for them."""
        self.run(["scancel", "--full", "--partition", "debug"], check=False)
        for daemon in self.daemons:
            if daemon.poll() is None:
                os.killpg(daemon.pid, signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
