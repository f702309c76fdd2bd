"""Data-parallel plumbing shared by the fine-tune and evaluation stages.

Processes are started by torchrun only (single node: `torchrun --standalone --nproc-per-node=N`;
several nodes: one `srun` task per node running torchrun with a c10d rendezvous). This module
reads torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE; MASTER_ADDR/PORT through the `env://`
init method) and nothing else. NCCL on CUDA, gloo on CPU. Run without torchrun (no WORLD_SIZE in
the environment: a test, a benchmark, an interactive session) it is one process and every
collective below is the identity.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from k400ft.io import die_with_parent, load_json_arg

# A stage process's exit codes (its last line, `rank R of N: exitcode: C (meaning)`)
EXIT_REFUSED = 2  # a refused spec or split CSV (the message names the key, or the file and line)
EXIT_LOCKED = 73  # EX_CANTCREAT: another trainer holds the state dir
EXIT_REQUEUE = 75  # EX_TEMPFAIL (sysexits.h): saved on a signal, run me again to resume
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a Ctrl-C
EXIT_MEANINGS = {
    0: "done",
    EXIT_REQUEUE: "stopped by a signal, state saved: run again to resume",
    EXIT_REFUSED: "a refused spec or split CSV",
    EXIT_LOCKED: "the state dir is in use by another trainer",
    EXIT_INTERRUPTED: "interrupted",
}
TIMEOUT = datetime.timedelta(minutes=30)  # a collective that waits longer is a hung rank
# beside NCCL, a gloo group for the small decisions made every step (`any_rank`): reducing
# them on the host needs no device sync, so the host keeps issuing work ahead of the GPU
_HOST_GROUP: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_primary(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def init(device: str | None = None, cpu_threads: int | None = None) -> DistInfo:
    """Join the torchrun job (or stay one process), pick this rank's device.

    device: "cuda" | "cpu" | None (cuda when available). On CUDA each process uses GPU
    LOCAL_RANK and the NCCL backend; on CPU the gloo backend and `cpu_threads` intra-op
    threads (`set_cpu_threads`). A process started by torchrun
    gets SIGKILL when torchrun dies (`io.die_with_parent`): torchrun puts each in a session
    of its own, so a kill -9 of torchrun would otherwise leave it running, re-parented to
    init, writing beside the run that replaces it.
    """
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: die with it (kill -9 too)
        die_with_parent()
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no CUDA device")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                "visible: start at most that many processes per node (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    set_cpu_threads(torch_device, cpu_threads)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if kind == "cuda" else "gloo",
            init_method="env://",
            timeout=TIMEOUT,
            **({"device_id": torch_device} if kind == "cuda" else {}),
        )
        if kind == "cuda":
            global _HOST_GROUP
            _HOST_GROUP = dist.new_group(backend="gloo", timeout=TIMEOUT)
    return DistInfo(rank, local_rank, world_size, torch_device)


def set_cpu_threads(device: torch.device, threads: int | None) -> None:
    """On a CPU device, compute with `threads` intra-op threads (None: leave torch's count,
    OMP_NUM_THREADS). A float result depends on the count (how a reduction is split), so a
    stage takes it from its spec, never from the CPUs its job was given."""
    if device.type == "cpu" and threads:
        torch.set_num_threads(int(threads))


def launch_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun set them ((0, 1) without torchrun), whether or not the
    process group is up (a rank that failed before or while joining it still knows)."""
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)


def active() -> bool:
    """Whether a process group with more than this process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_primary() -> bool:
    """Rank 0: the only process that writes outputs, logs progress and shows a bar."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects; small ones: RNG states, metrics)."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over ranks (in place, also returned). Use counts and sums, never means,
    so uneven shards reduce exactly."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flags: Sequence[bool]) -> list[bool]:
    """For each flag: True on every rank when it is True on at least one (one all-reduce, on
    the host: it waits for no device work).

    E.g. [a signal reached this rank, a timed save is due]: all ranks then act at the same step."""
    if not active():
        return [bool(flag) for flag in flags]
    value = torch.tensor([1 if flag else 0 for flag in flags], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_HOST_GROUP)
    return [bool(v) for v in value.tolist()]


def cleanup() -> None:
    """Leave the process group (call once at the end, on every rank)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def loader_workers(threads: int, procs: int | None = None) -> int:
    """DataLoader workers per process: the job's CPUs shared by this node's `procs` processes
    (default: torchrun's LOCAL_WORLD_SIZE), one CPU each kept for the process itself. Derived
    from the CPUs the scheduler gave, not from config, so a loader setting never re-runs a
    stage."""
    procs = procs or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(threads // procs - 1, 0)


def stage_parser(doc: str, what: str, outputs: str) -> argparse.ArgumentParser:
    """The command line every torchrun stage script shares: --spec (JSON, `what`), --device,
    --out-dir (for `outputs`) and --threads (the job's CPUs on this node)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", required=True, help=f"{what} spec as JSON (see above)")
    parser.add_argument("--device", required=True, choices=("cuda", "cpu"))
    parser.add_argument("--out-dir", required=True, help=f"folder for {outputs}")
    parser.add_argument("--threads", type=int, default=1, help="CPUs of the job on this node")
    return parser


def stage_spec(args: argparse.Namespace) -> dict:
    """The stage's spec from --spec, with the loader workers that --threads allows."""
    spec = load_json_arg(args.spec, "--spec")
    spec["data"]["num_workers"] = loader_workers(args.threads)
    return spec


def torchrun(argv: list[str]) -> int:
    """torchrun (torch.distributed.run) with `argv`, in this process; returns its exit code (0,
    or 1 for any failure, as torchrun's). A failed run ends with one summary line instead of
    torchrun's traceback (some 30 lines after the trainers' own): the script, the exit code
    of each failed rank and what it means, and the script's --state-dir with its trainer.log.
    A torchrun stopped by a signal learns no trainer's code: rank 0's `exitcode:` line in
    trainer.log, written since this start, gives it."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    start = time.time()
    args = run.parse_args(argv)
    script = os.path.basename(args.training_script)
    state_dir = _option(args.training_script_args, "--state-dir")
    try:
        run.run(args)
        return 0
    except ChildFailedError as err:
        codes = [  # the first to fail first: the others may be its consequence
            f"rank {rank}: {_described(failure.exitcode, failure.signal_name())}"
            for rank, failure in sorted(err.failures.items(), key=lambda f: f[1].timestamp)
        ]
        summary = f"{script} failed: {'; '.join(codes)}"
    except SignalException as err:
        last = _last_exit_line(state_dir, start)
        summary = f"stopped by {signal.Signals(err.sigval).name}; {script} " + (
            last or "exit codes: see the `exitcode:` lines above"
        )
    if state_dir:
        log = Path(state_dir) / "trainer.log"
        summary += f"; state dir {state_dir} (every attempt's log: {log})"
    print(f"torchrun: {summary}", file=sys.stderr, flush=True)
    return 1


def _described(code: int, signal_name: str) -> str:
    if code < 0:
        return f"killed by {signal_name}"
    return f"exit code {code} ({EXIT_MEANINGS.get(code, 'failed')})"


def _option(argv: Sequence[str], name: str) -> str | None:
    """The value of option `name` (`--name value` or `--name=value`) in `argv`, or None."""
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _last_exit_line(state_dir: str | None, since: float) -> str | None:
    """`rank R of N: exit code C (meaning)` from the last exit line of <state_dir>/trainer.log
    if it was written since `since`, else None."""
    log = Path(state_dir or "") / "trainer.log"
    if not state_dir or not log.is_file() or log.stat().st_mtime < since:
        return None
    with open(log, "rb") as handle:  # its end: the log keeps every attempt
        handle.seek(max(0, log.stat().st_size - 65536))
        tail = handle.read().decode(errors="replace")
    lines = re.findall(r"rank (\d+) of (\d+): exitcode: (-?\d+)", tail)
    if not lines:
        return None
    rank, size, code = lines[-1]
    return f"rank {rank} of {size} (from trainer.log): {_described(int(code), '')}"
