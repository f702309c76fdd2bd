"""A stand-in trainer for tests/test_slurm.py with the fine-tune engine's stop/resume contract:
on SIGTERM it saves its state (slowly, like a real checkpoint) and exits 75 (EX_TEMPFAIL);
started again, it finds the state and finishes. The state records whether, when the save ended,
this process was still a descendant of its job step's slurmstepd: if a process in between
(the shell, Snakemake) died on the signal, the step ends, and with proctrack/cgroup (most
clusters) everything left in it is killed, mid-save. Usage: stop_and_resume.py STATE OUTPUT."""

import os
import signal
import sys
import time
from pathlib import Path


def under_slurmstepd(pid: int) -> bool:
    """Is `pid` still a descendant of a slurmstepd (no orphaning on the way up)?"""
    while pid > 1:
        if Path(f"/proc/{pid}/comm").read_text().startswith("slurmstepd"):
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


state, output = Path(sys.argv[1]), Path(sys.argv[2])
job = os.environ["SLURM_JOB_ID"]
if (state / "saved").exists():
    output.write_text(f"resumed in job {job} from {(state / 'saved').read_text()}\n")
    sys.exit(0)
stop: list[int] = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
state.mkdir(parents=True, exist_ok=True)
(state / "running").write_text(job)
while not stop:
    time.sleep(0.1)
time.sleep(3)  # writing a real state takes a while
attached = "attached" if under_slurmstepd(os.getpid()) else "orphaned"
(state / "saved").write_text(f"job {job} {attached}")
sys.exit(75)
