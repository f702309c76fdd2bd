"""`snakemake --profile slurm` for real.

Without a cluster: the exact sbatch lines snakemake-executor-plugin-slurm builds from our rules
and profile for the paper run (stand-in sbatch / squeue record them).
On a throwaway cluster (tests/slurm/cluster.sh: slurmctld + two virtual nodes n1, n2 with fake
GPUs, munge, no accounting): GPU jobs through sbatch; a SIGTERM to a running fine-tune-shaped job
(what `--signal=TERM@T` sends before the time limit) reaching its trainer, a save, a retry and
a resume; the embedded demo (2 epochs) with every job through sbatch; the real fine-tune rule
on 2 nodes (c10d rendezvous under srun), stopped by SIGTERM and resumed.
With CI=true a cluster that does not start fails these tests with the daemons' logs; elsewhere
(no root, no apt) they are skipped with that reason.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests/slurm/cluster.sh"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# `--profile slurm` as a user types it, plus what a CI run needs: a fast first status check.
SLURM = [
    "--profile",
    "slurm",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "1",
]
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+)")


def environment() -> dict[str, str]:
    """The jobs run `python` and `torchrun` from PATH (sbatch --export=ALL): this venv's."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def snakemake(repo: Path, *args: str, timeout: float, env=None) -> subprocess.CompletedProcess:
    """Run snakemake in `repo` (stdin closed: the plugin must never wait on a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=repo,
        env=env or environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The working tree without its outputs, so runs here never touch the real results/."""
    dest = tmp_path_factory.mktemp("slurm") / "repo"
    skip = (".git", ".snakemake", ".venv", "results", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(*skip))
    return dest


# -- the sbatch lines, no cluster needed -------------------------------------------------------

STAND_INS = {
    # argv of each call NUL-separated in $FAKE_SLURM/<job id>; the job id is the shell's pid
    "sbatch": 'printf "%s\\0" "$@" > "$FAKE_SLURM/$$"; echo $$',
    "squeue": 'ls "$FAKE_SLURM" | sed "s/$/|COMPLETED/"',
    "sinfo": 'printf "PARTITION\\nbatch*\\n"',
    "scontrol": 'echo "MinJobAge = 300 sec"',
    "sacct": "exit 1",
    "scancel": "exit 0",
}


def recorded_sbatch(
    repo: Path, tmp_path: Path, launch: dict, targets: list[str], changes: dict | None = None
) -> dict:
    """Run `snakemake --profile slurm` on the paper config (inputs present, so only the
    targets' jobs run; a user's Kinetics copy unless `changes` say otherwise) against
    stand-in SLURM commands: every job 'completes' without its outputs and is submitted once
    more. Returns {rule: [argv of attempt 1, of attempt 2]}."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    results = tmp_path / "results"
    for name in ("train", "val", "test", "labels", "dropped"):
        (results / "splits").mkdir(parents=True, exist_ok=True)
        (results / f"splits/{name}.csv").touch()
    (results / "splits/summary.json").touch()
    (results / "checkpoints").mkdir()
    for ckpt in ("catmae_vits16_pt300", "videomae_vits16_pt1600", "videomae_vits16_k400_ft"):
        (results / f"checkpoints/{ckpt}.pth").touch()
    config = {"results": str(results), "launch": launch, "kinetics": {"source": "local"}}
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({**config, **(changes or {})}))
    env = environment()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_SLURM=str(calls))
    proc = snakemake(
        repo,
        *targets,
        *SLURM,
        "--retries",
        "1",
        "--latency-wait",
        "0",
        "--configfile",
        "config.yaml",
        str(overlay),
        timeout=300,
        env=env,
    )
    assert "MissingOutputException" in proc.stdout, proc.stdout[-3000:]
    by_rule: dict[str, list[list[str]]] = {}
    for call in sorted(calls.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        argv = call.read_bytes().decode().split("\0")[:-1]
        rule = argv[argv.index("--comment") + 1].split("_wildcards_")[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(argv)
    return by_rule


def option(argv: list[str], name: str) -> str | None:
    """Value of `name` in argv, given as `name value` or `name=value`."""
    for i, arg in enumerate(argv):
        if arg == name:
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def test_sbatch_lines_of_the_paper_run(repo, tmp_path):
    """One node, 4 GPUs: --gpus=4, CPUs = 4 x (10 loader workers + 1), the memory, runtime and
    pre-timeout SIGTERM of profiles/slurm, requeue; a retry gets the longer runtime."""
    launch = {
        "finetune": {"nodes": 1, "procs_per_node": 4, "device": "cuda"},
        "evaluate": {"nodes": 1, "procs_per_node": 1, "device": "cuda"},
    }
    targets = [
        "results/finetune/catmae_vits16/final.pt",
        "results/evaluate/videomae_vits16_k400_released/metrics.json",
    ]
    targets = [str(tmp_path / t) for t in targets]
    calls = recorded_sbatch(repo, tmp_path, launch, targets)
    assert sorted(calls) == ["evaluate", "finetune"] and all(len(c) == 2 for c in calls.values())
    first, retry = calls["finetune"]
    assert option(first, "--gpus") == "4"
    assert option(first, "--cpus-per-task") == "44"
    assert option(first, "--mem") == "128000"
    assert option(first, "--nodes") == "1"
    assert option(first, "--signal") == "TERM@600"
    assert "--requeue" in first
    assert option(first, "--ntasks-per-gpu") is None and option(first, "--gres") is None
    assert (option(first, "-t"), option(retry, "-t")) == ("1440", "2880")
    evaluate = calls["evaluate"][0]
    assert option(evaluate, "--gpus") == "1"
    assert option(evaluate, "--cpus-per-task") == "11"
    assert option(evaluate, "--mem") == "32000"
    assert (option(evaluate, "-t"), option(calls["evaluate"][1], "-t")) == ("240", "480")
    assert option(evaluate, "--signal") is None


def test_sbatch_lines_of_the_data_preparation(repo, tmp_path):
    """Kinetics-400 from its archive: a part's fetch, a part's extraction and a resize shard
    are CPU jobs (no GPU asked) with the profile's memory, runtimes and the rule's threads."""
    root = tmp_path / "k400"
    kinetics = {"source": "archive", "root": str(root)}
    kinetics["archive"] = {"parts": {"train": 2, "val": 1}}
    launch = {
        "finetune": {"nodes": 1, "procs_per_node": 4, "device": "cuda"},
        "evaluate": {"nodes": 1, "procs_per_node": 1, "device": "cuda"},
    }
    given = ["archives/train/parts.txt", "archives/val/parts.txt", "annotations/train.csv"]
    given += ["annotations/validate.csv"]
    runs = {  # what each run's targets read, oldest first (under k400/ or results/), targets
        "fetch+extract": (
            ["results/plan/data.json", "k400/archives/val/part_0.tar.gz"],
            ["k400/archives/train/part_1.tar.gz", "results/kinetics/extract/val/part_0.json"],
        ),
        "resize": (
            ["results/plan/data.json"]
            + [f"results/kinetics/extract/{p}.json" for p in ("train/part_0", "train/part_1")]
            + [f"results/kinetics/extract/{p}.json" for p in ("replacement/part_0", "val/part_0")]
            + ["results/kinetics/extract/train.json", "results/kinetics/extract/val.json"],
            ["results/kinetics/resize/shards/3.json"],
        ),
    }
    calls = {}
    for name, (present, targets) in runs.items():
        base = tmp_path / name
        files = [base / "k400" / g for g in given] + [base / p for p in present]
        for number, path in enumerate(files):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            os.utime(path, (1_700_000_000 + number,) * 2)
        overlay = {"kinetics": {**kinetics, "root": str(base / "k400")}}
        calls |= recorded_sbatch(repo, base, launch, [str(base / t) for t in targets], overlay)
    assert sorted(calls) == ["kinetics_extract", "kinetics_fetch", "kinetics_resize"]
    expected = {  # rule: --mem, -t of attempt 1 and 2, --cpus-per-task
        "kinetics_fetch": ("1000", ("120", "240"), "1"),
        "kinetics_extract": ("1000", ("60", "120"), "1"),
        "kinetics_resize": ("8000", ("240", "480"), "8"),
    }
    for rule, (memory, runtimes, cpus) in expected.items():
        first, retry = calls[rule][:2]
        assert option(first, "--gpus") is None and option(first, "--gres") is None, rule
        assert option(first, "--mem") == memory and option(first, "--cpus-per-task") == cpus
        assert (option(first, "-t"), option(retry, "-t")) == runtimes, rule


def test_sbatch_lines_of_a_two_node_finetune(repo, tmp_path):
    """Two nodes x 4 GPUs: --nodes=2 --ntasks=2 (one torchrun per node), GPUs per node as
    --gres=gpu:4 (never --gpus, a total), no --ntasks-per-gpu; the job script runs the rule
    itself (the plugin's MPI form) so that the rule's srun starts the torchruns."""
    launch = {
        "finetune": {"nodes": 2, "procs_per_node": 4, "device": "cuda"},
        "evaluate": {"nodes": 1, "procs_per_node": 1, "device": "cuda"},
    }
    target = str(tmp_path / "results/finetune/videomae_vits16/final.pt")
    (argv, _retry) = recorded_sbatch(repo, tmp_path, launch, [target])["finetune"]
    assert option(argv, "--nodes") == "2" and option(argv, "--ntasks") == "2"
    assert option(argv, "--gres") == "gpu:4" and option(argv, "--gpus") is None
    assert option(argv, "--ntasks-per-gpu") is None
    assert option(argv, "--cpus-per-task") == "44"
    assert option(argv, "--signal") == "TERM@600"


# -- a real cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """Start the throwaway cluster once for this module (or use the one a developer left
    running: exit code 3, then left running); yields its start time in seconds."""
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=600, check=False
    )
    if proc.returncode not in (0, 3):
        reason = f"the SLURM test cluster did not start:\n{proc.stdout}\n{proc.stderr}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield time.monotonic() - start
    finally:
        if proc.returncode == 0:
            subprocess.run(
                ["bash", str(CLUSTER), "stop"], capture_output=True, timeout=120, check=False
            )


def sbatch(*args: str) -> subprocess.CompletedProcess:
    """sbatch --wait: returns when the job has ended, with its exit code."""
    return subprocess.run(
        ["sbatch", "--parsable", "--wait", "-t", "2", "--mem=500", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_gpu_jobs_through_sbatch(cluster, tmp_path, capsys):
    with capsys.disabled():
        print(f"\n[slurm] cluster started in {cluster:.1f} s")
    out = tmp_path / "one.out"
    proc = sbatch("--gpus=2", "-o", str(out), "--wrap", 'echo "gpus=$SLURM_GPUS_ON_NODE"')
    assert proc.returncode == 0, proc.stderr
    assert "gpus=2" in out.read_text()
    out = tmp_path / "two.out"
    show = 'echo "$SLURMD_NODENAME $SLURM_GPUS_ON_NODE"'
    wrap = f"srun --ntasks-per-node=1 sh -c '{show}'"
    proc = sbatch("-N2", "-n2", "--gres=gpu:2", "-o", str(out), "--wrap", wrap)
    assert proc.returncode == 0, proc.stderr
    assert sorted(out.read_text().split("\n")[:2]) == ["n1 2", "n2 2"]
    # the GRES are counted: more GPUs per node than a node has is refused, not granted
    proc = sbatch("--gres=gpu:3", "-o", str(tmp_path / "no.out"), "--wrap", "true")
    assert proc.returncode != 0 and "node configuration is not available" in proc.stderr


STAND_IN_SNAKEFILE = """
# A stand-in for rules/finetune.smk: the same launcher, resources and shell form (the demo's
# launch: one node, one process), a stand-in trainer.
configfile: {demo!r}


include: {common!r}


rule stop_and_resume:
    output:
        "resumed.txt",
    log:
        "stop_and_resume.log",
    threads: 1
    resources:
        **launch_resources("finetune"),
        mem_mb=1500,
        runtime=5,
    params:
        launch=launcher("finetune"),
    shell:
        "{{params.launch}} {script} state {{output}} 2> {{log}}"
"""


def stop_once(repo: Path, args: list[str], started) -> tuple[subprocess.CompletedProcess, str]:
    """Run snakemake; as soon as `started()` returns the SLURM job id of the first attempt,
    send SIGTERM to that job's steps, like `--signal=TERM@T` does before the time limit
    (scancel --signal without --batch or --full). Returns the finished run and that job id."""
    with subprocess.Popen(
        [sys.executable, "-m", "snakemake", *args],
        cwd=repo,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as run:
        job, deadline = None, time.monotonic() + 300
        while job is None and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
            job = started()
        if job is None:
            run.kill()
            pytest.fail(f"no first attempt to stop:\n{run.communicate()[0][-4000:]}")
        subprocess.run(["scancel", "--signal=TERM", job], check=True, timeout=30)
        out = run.communicate(timeout=900)[0]
    return subprocess.CompletedProcess(run.args, run.returncode, out), job


def test_sigterm_reaches_the_trainer_which_saves_and_resumes(cluster, repo, tmp_path):
    """The fine-tune's job chain under SLURM (sbatch, the plugin's srun step, Snakemake,
    torchrun, trainer): a SIGTERM reaches the trainer, which saves and exits 75 while still in
    its job step; the job fails, Snakemake submits it again, the new job resumes."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        STAND_IN_SNAKEFILE.format(
            demo=str(ROOT / "demo/config.yaml"),
            common=str(ROOT / "rules/common.smk"),
            script=ROOT / "tests/slurm/stop_and_resume.py",
        )
    )
    running = tmp_path / "state/running"
    run, job = stop_once(
        repo,
        [*SLURM, "--retries", "1", "--snakefile", str(snakefile), "--directory", str(tmp_path)],
        lambda: running.read_text() if running.exists() else None,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert len(SUBMITTED.findall(run.stdout)) == 2, run.stdout[-4000:]
    # saved while still in its job step: nothing between slurmstepd and the trainer died
    assert (tmp_path / "state/saved").read_text() == f"job {job} attached"
    resumed = (tmp_path / "resumed.txt").read_text().split()
    assert resumed[:3] == ["resumed", "in", "job"] and resumed[3] != job
    assert resumed[4:] == ["from", "job", job, "attached"]


@pytest.fixture(scope="module")
def short_demo(tmp_path_factory) -> Path:
    """The demo cut to 2 epochs and a 20-step pretext: the same DAG and code paths, CI-sized."""
    overlay = tmp_path_factory.mktemp("short") / "short.yaml"
    short = {
        "recipe": {"epochs": 2, "warmup_epochs": 1},
        "demo": {"pretrain": {"steps": 20, "clips": 64}},
    }
    overlay.write_text(yaml.safe_dump(short))
    return overlay


@pytest.fixture(scope="module")
def demo_on_slurm(cluster, repo, short_demo):
    """The embedded demo with every non-local job through sbatch (module-wide, run once)."""
    start = time.monotonic()
    demo = ["--profile", "profiles/demo", "--configfile", "demo/config.yaml", str(short_demo)]
    proc = snakemake(repo, *SLURM, *demo, timeout=1800)
    return proc, time.monotonic() - start


def test_demo_through_slurm(demo_on_slurm, repo, capsys):
    proc, seconds = demo_on_slurm
    assert proc.returncode == 0, proc.stdout[-6000:]
    with capsys.disabled():
        print(f"\n[slurm] demo (2 epochs) through SLURM in {seconds:.0f} s")
    # the 7 parts' fetches and extractions, the 2 counts, the 2 resize shards (they make the
    # short keyframes: data.transcode is on in the demo), splits, 2 fine-tunes and 2
    # evaluations are SLURM jobs; the demo's inputs, the list files, annotation CSVs and data
    # plan, the resize's report and the table are local
    assert len(SUBMITTED.findall(proc.stdout)) == 23, proc.stdout[-6000:]
    logs = repo / ".snakemake/slurm_logs"
    jobs = {"kinetics_fetch": 7, "kinetics_extract": 7, "kinetics_verify": 2}
    jobs |= {"kinetics_resize": 2, "splits": 1, "finetune": 2, "evaluate": 2}
    for rule, count in jobs.items():
        assert len(list((logs / f"rule_{rule}").rglob("*.log"))) == count, rule
    results = repo / "results/demo"
    for model in ("catmae_vits16", "videomae_vits16"):
        assert (results / f"evaluate/{model}/metrics.json").stat().st_size > 0
    assert (results / "report/table.md").stat().st_size > 0


def test_finetune_on_two_nodes_saves_on_sigterm_and_resumes(
    demo_on_slurm, repo, short_demo, tmp_path
):
    """The real fine-tune rule with launch.finetune.nodes = 2 on the demo's data: one torchrun
    agent per virtual node, c10d rendezvous; SIGTERM in the first epoch: the trainers save
    `last` and exit, Snakemake submits the job again, both nodes resume mid-epoch and finish."""
    assert demo_on_slurm[0].returncode == 0, "needs the demo's data (see test_demo_through_slurm)"
    state = repo / "results/demo/state/catmae_vits16"
    shutil.rmtree(state, ignore_errors=True)
    overlay = tmp_path / "two_nodes.yaml"
    launch = {"nodes": 2, "procs_per_node": 1, "device": "cpu"}
    per_process = {"catmae_vits16": {"finetune": {"batch_per_gpu": 8}}}  # global batch 16 kept
    overlay.write_text(yaml.safe_dump({"launch": {"finetune": launch}, "models": per_process}))
    target = "results/demo/finetune/catmae_vits16/final.pt"
    demo = ["--profile", "profiles/demo", "--configfile", "demo/config.yaml", str(short_demo)]

    def started() -> str | None:
        log = state / "train_log.jsonl"
        if log.exists() and '"step"' in log.read_text():
            return subprocess.run(
                ["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, check=True
            ).stdout.strip()
        return None

    run, _job = stop_once(repo, [target, *SLURM, "--retries", "1", *demo, str(overlay)], started)
    log = (repo / "results/demo/logs/finetune/catmae_vits16.log").read_text(errors="replace")
    assert run.returncode == 0, run.stdout[-3000:] + log[-3000:]
    assert len(SUBMITTED.findall(run.stdout)) == 2, run.stdout[-3000:]
    # the retry ran on both nodes, two processes, and resumed where the signal stopped it
    retry = SUBMITTED.findall(run.stdout)[-1]
    nodes = ["squeue", "--noheader", "--states=all", f"--jobs={retry}", "--format=%N"]
    ran_on = subprocess.run(nodes, capture_output=True, text=True, check=True).stdout.strip()
    assert ran_on == "n[1-2]", ran_on
    assert "on 2 process(es)" in log, log[-3000:]
    resumed = re.search(r"RESUMED at epoch \d+, step (\d+) of (\d+)", log)
    assert resumed and 0 < int(resumed[1]) < int(resumed[2]), (
        "no mid-epoch save on SIGTERM (first attempt's log is overwritten; look for "
        f"'DataLoader worker ... killed by signal' in a rerun):\n{log[-3000:]}"
    )
    assert (repo / target).stat().st_size > 0
