"""The workflow as a whole: config validation, the paper DAG, lint and formatting."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PAPER_JOBS = {"checkpoint": 3, "splits": 1, "finetune": 2, "evaluate": 3, "report": 1, "all": 1}


def snakemake(*args, cwd=ROOT, check=True, timeout=300):
    """Run the venv's snakemake on the Snakefile in `cwd`; the completed process (stdout and
    stderr merged) is returned, or AssertionError with the output's tail if `check` fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        check=False,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry-run."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def fake_kinetics(root: Path) -> Path:
    """A Kinetics-400-shaped tree (official annotation layout) of empty files."""
    (root / "annotations").mkdir(parents=True)
    for split, csv in (("train", "train.csv"), ("val", "validate.csv")):
        (root / split).mkdir()
        lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
        for i, label in enumerate(["abseiling", "air drumming", "zumba"]):
            youtube_id = f"{split[:2]}{i:09d}"
            lines.append(f"{label},{youtube_id},10,20,{split},0")
            (root / split / f"{youtube_id}_000010_000020.mp4").touch()
        (root / "annotations" / csv).write_text("\n".join(lines) + "\n")
    return root


def write_config(path: Path, edit) -> Path:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config))
    return path


def paper_dry_run(tmp_path, *targets: str, edit=None) -> str:
    """A dry-run of the paper config (changed by `edit`, if given) on a K400-shaped tree (no
    network, no GPU); `targets` may hold other options too."""
    k400 = fake_kinetics(tmp_path / "k400")
    config = write_config(tmp_path / "config.yaml", edit) if edit else ROOT / "config.yaml"
    return snakemake(
        "-n",
        *targets,
        "--directory",
        str(tmp_path),
        "--configfile",
        str(config),
        "--config",
        f"kinetics={{root: {k400}, layout: annotations, source: local}}",
    ).stdout


def test_paper_dag_dry_run(tmp_path):
    """The full paper DAG from a K400-shaped tree, no network, no GPU."""
    out = paper_dry_run(tmp_path)
    assert job_counts(out) == PAPER_JOBS
    for ckpt in ("catmae_vits16_pt300", "videomae_vits16_pt1600", "videomae_vits16_k400_ft"):
        assert f"results/checkpoints/{ckpt}.pth" in out
    assert "results/report/table.md" in out


def test_several_seeds_fan_out_fine_tuning_and_evaluation_not_the_released_row(tmp_path):
    out = paper_dry_run(
        tmp_path, "--printshellcmds", edit=lambda c: c["finetune"].update(seeds=[0, 1, 2])
    )
    assert job_counts(out) == {**PAPER_JOBS, "finetune": 6, "evaluate": 7}
    for model in ("catmae_vits16", "videomae_vits16"):
        for run, seed in ((model, 0), (f"{model}_seed1", 1), (f"{model}_seed2", 2)):
            assert f"results/finetune/{run}/final.pt" in out, run  # seed 0: today's path
            assert f"results/evaluate/{run}/metrics.json" in out, run
            command = next(
                line for line in out.splitlines() if f"--state-dir results/state/{run} " in line
            )
            assert f'"seed": {seed},' in command, command  # the run's seed reaches the recipe
    # released weights: one evaluation (7 = 2 models x 3 seeds + 1), under their own name
    assert "videomae_vits16_k400_released_seed" not in out


# the jobs the paper run adds when it starts from the public archive (config.yaml as it is):
# both list files, the annotation CSVs, the data plan, 242 + 20 parts and the replacement,
# each fetched and extracted, both splits counted, 64 resize shards and their report
ARCHIVE_JOBS = {
    "kinetics_list": 2,
    "kinetics_annotations": 1,
    "plan_data": 1,
    "kinetics_fetch": 263,
    "kinetics_extract": 263,
    "kinetics_verify": 2,
    "kinetics_resize": 64,
    "kinetics_resize_gather": 1,
}


def test_paper_dag_from_nothing_dry_runs_offline(tmp_path):
    """config.yaml as it is (kinetics.source: archive): the whole chain from the public
    archive to the table is known without a network and without a Kinetics-400 tree (users'
    CI dry-runs it), from the part counts in config."""
    out = snakemake(
        "-n", "-p", "--directory", str(tmp_path), "--configfile", str(ROOT / "config.yaml")
    ).stdout
    assert job_counts(out) == {**PAPER_JOBS, **ARCHIVE_JOBS}
    assert not (tmp_path / "results").exists()
    fetches = re.findall(r"^rule kinetics_fetch:\n((?:    .*\n)+)", out, re.M)
    assert len(fetches) == 263
    for block in fetches:  # every part waits for the data plan, which refuses a small disk
        assert "results/plan/data.json" in re.search(r"^    input: (.*)$", block, re.M)[1]
    assert "/data/kinetics400/archives/train/part_241.tar.gz" in out
    assert "--url https://s3.amazonaws.com/kinetics/400/replacement_for_corrupted_k400.tgz" in out
    assert out.count("kinetics_connections=1,") == 263  # one connection each, 8 at a time


def test_with_transcode_on_the_resize_makes_the_keyframes_in_one_encode(tmp_path):
    """data.transcode on and the archive's resize on: no transcode stage (its copies would
    be a second encode); the resize encodes with the copies' keyframe interval and tune, and
    the fine-tune reads the splits stage's CSVs."""
    config = write_config(
        tmp_path / "config.yaml", lambda c: c["data"]["transcode"].update(enabled=True)
    )
    out = snakemake(
        "-n", "-p", "--directory", str(tmp_path), "--configfile", str(config),
        "--replace-workflow-config",
    ).stdout  # fmt: skip
    counts = job_counts(out)
    assert "transcode" not in counts and counts["kinetics_resize"] == 64
    settings = re.findall(r"--settings '([^']*)'", out)
    assert {json.dumps(json.loads(s), sort_keys=True) for s in settings} == {
        json.dumps(
            {"crf": 23, "keyint": 16, "preset": "medium", "short_side": 320, "tune": "fastdecode"},
            sort_keys=True,
        )
    }
    assert "--train results/splits/train.csv --val results/splits/val.csv" in out


def test_the_plan_target_needs_only_the_splits_never_a_fine_tune(tmp_path):
    out = paper_dry_run(tmp_path, "plan")
    assert job_counts(out) == {"splits": 1, "plan": 1}
    assert "results/plan/cost.md" in out


def test_demo_dag_dry_run(tmp_path):
    out = snakemake(
        "-n",
        "-p",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(ROOT / "demo/config.yaml"),
        "--replace-workflow-config",
    ).stdout
    assert job_counts(out) == DEMO_JOBS
    # on CPU the intra-op thread count is part of each fine-tune's and evaluation's spec
    # (params: a change reruns them), not the job's OMP_NUM_THREADS
    assert out.count('"cpu_threads": 2') == 4, out[-3000:]
    assert '"cpu_threads"' not in paper_dry_run(tmp_path / "paper", "-p")  # CUDA: not used
    # the archive's params hold only what its bytes depend on (the whole kinetics section
    # rebuilt it, and so every fetch and extract, on a change of the resize settings)
    (command,) = [line for line in out.splitlines() if "make_demo.py archive" in line]
    archive = json.loads(command.split("--kinetics '", 1)[1].split("'", 1)[0])
    assert set(archive) == {"layout", "annotations", "video_dirs", "extensions", "num_classes",
                            "archive"}  # fmt: skip
    assert set(archive["archive"]) == {"lists", "parts", "annotations", "replacement"}


DEMO_JOBS = {
    "demo_archive": 1,
    "demo_checkpoint": 2,
    "checkpoint": 2,
    # the demo's miniature archive, as the paper's: 4 + 2 parts and the replacement
    "kinetics_list": 2,
    "kinetics_annotations": 1,
    "plan_data": 1,
    "kinetics_fetch": 7,
    "kinetics_extract": 7,
    "kinetics_verify": 2,
    # 2 shards, then the report; data.transcode is on: the resize makes the keyframes
    "kinetics_resize": 2,
    "kinetics_resize_gather": 1,
    "splits": 1,
    "finetune": 2,
    "evaluate": 2,
    "report": 1,
    "all": 1,
}


def paper_args(tmp_path) -> list[str]:
    """The paper config's command-line arguments on a K400-shaped tree under `tmp_path`."""
    k400 = fake_kinetics(tmp_path / "k400")
    return [
        *("--directory", str(tmp_path), "--configfile", str(ROOT / "config.yaml")),
        *("--config", f"kinetics={{root: {k400}, layout: annotations, source: local}}"),
    ]


def finished_run(tmp_path, args: list[str]) -> None:
    """Every declared output of the DAG of `args` (all under `tmp_path`) as a finished run
    leaves it: empty files of one mtime, as the dry-run's summary lists them."""
    summary = snakemake("-n", "--summary", *args).stdout
    for line in summary.split("output_file", 1)[1].splitlines()[1:]:
        path = tmp_path / line.split("\t")[0]
        assert path.resolve().is_relative_to(tmp_path), path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1e9, 1e9))
    assert "Nothing to be done" in snakemake("-n", *args).stdout


@pytest.mark.parametrize(
    ("missing", "remade"),
    [
        ("results/evaluate/videomae_vits16", {"evaluate": 1, "report": 1, "all": 1}),
        (
            "results/finetune/catmae_vits16/train_log.jsonl",
            {"finetune": 1, "evaluate": 1, "report": 1, "all": 1},
        ),
    ],
    ids=["evaluation", "fine-tune log"],
)
def test_a_missing_intermediate_output_is_remade_and_everything_after_it(tmp_path, missing, remade):
    """`--forcerun evaluate` deletes the evaluation's outputs before the job runs; killed then,
    the next run said "Nothing to be done" and kept the old table (Snakemake skips a missing
    intermediate file when the files after it exist, snakemake#1978). Every stage's outputs
    are targets of `all`: the missing one is remade and everything after it follows."""
    args = paper_args(tmp_path)
    finished_run(tmp_path, args)
    target = tmp_path / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    out = snakemake("-n", *args).stdout
    assert "Nothing to be done" not in out, "the missing output was not remade"
    assert job_counts(out) == remade, out[-3000:]


def test_every_stage_of_the_archive_chain_is_a_target_but_the_parts_deleted_after_extraction(
    tmp_path,
):
    """From the public archive (config.yaml as it is, keep_archives false): a missing verify
    record or resize shard is remade, a part deleted once extracted (temp) is not fetched
    again."""
    args = ["--directory", str(tmp_path), "--configfile", str(ROOT / "config.yaml")]
    args += ["--config", f"kinetics={{root: {tmp_path / 'k400'}}}"]
    finished_run(tmp_path, args)
    for part in tmp_path.glob("k400/archives/*/part_*.tar.gz"):  # temp(): gone once extracted
        part.unlink()
    assert "Nothing to be done" in snakemake("-n", *args).stdout  # never a target of `all`
    (tmp_path / "results/kinetics/extract/val.json").unlink()
    (tmp_path / "results/kinetics/resize/shards/7.json").unlink()
    counts = job_counts(snakemake("-n", *args).stdout)
    assert counts["kinetics_verify"] == 1 and counts["kinetics_resize"] == 64, counts
    assert "kinetics_fetch" not in counts and "kinetics_extract" not in counts, counts


def config_error(tmp_path, edit) -> subprocess.CompletedProcess:
    """A dry-run of the paper config after `edit`."""
    config = write_config(tmp_path / "config.yaml", edit)
    options = ("--directory", str(tmp_path), "--configfile", str(config))
    return snakemake("-n", *options, "--replace-workflow-config", check=False)


def the_one_line(proc: subprocess.CompletedProcess) -> str:
    """Exit 2 and one line of output besides Snakemake's note of the workflow profile."""
    lines = [
        line for line in proc.stdout.splitlines() if not line.startswith("Using workflow specific")
    ]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["recipe"].update(epochs_typo=3),
            r"recipe\.epochs_typo: unknown key \(allowed: epochs, warmup_epochs, .*\)",
        ),
        (
            lambda c: c["recipe"].update(epochs="many"),
            r"recipe\.epochs: 'many' is not of type 'integer' \(allowed: an integer >= 1\)",
        ),
        (
            lambda c: c["kinetics"].pop("root"),
            r"kinetics\.root: missing \(required: root, layout\)",
        ),
        (
            lambda c: c["models"]["catmae_vits16"]["arch"].update(patchify="4d"),
            r"models\.catmae_vits16\.arch\.patchify: '4d' is not allowed \(allowed: 2d, 3d\)",
        ),
        (
            lambda c: c["checkpoints"]["catmae_vits16_pt300"].update(path="/x.pth"),
            r"checkpoints\.catmae_vits16_pt300: give exactly one source \(allowed: gdrive_id "
            r"or path\)",
        ),
        (
            lambda c: c["kinetics"].update(layout="class_folders"),
            r"kinetics\.layout: 'annotations' was expected \(allowed: annotations\)",
        ),
        (
            lambda c: c["kinetics"]["archive"]["parts"].update(train="242"),
            r"kinetics\.archive\.parts\.train: '242' is not of type 'integer' \(allowed: an "
            r"integer >= 1\)",
        ),
        (
            lambda c: c["kinetics"].update(resize_short_side=321),
            r"kinetics\.resize_short_side: 321 is not a multiple of 2 \(allowed: .*\)",
        ),
        (
            lambda c: c["models"]["catmae_vits16"].update(pretrained="catmae_missing"),
            r"models\.catmae_vits16\.pretrained: 'catmae_missing' is not a checkpoint "
            r"\(allowed: catmae_vits16_pt300, videomae_vits16_k400_ft, videomae_vits16_pt1600\)",
        ),
        (
            lambda c: c["released"]["videomae_vits16_k400_released"].update(checkpoint="x"),
            r"released\.videomae_vits16_k400_released\.checkpoint: 'x' is not a checkpoint "
            r"\(allowed: catmae_vits16_pt300, .*\)",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "missing-required",
        "bad-enum",
        "two-sources",
        "archive-layout",
        "part-count",
        "odd-short-side",
        "no-such-pretrained",
        "no-such-released",
    ],
)
def test_config_errors_are_one_line_naming_the_key_and_its_allowed_values(tmp_path, edit, message):
    """Checked when the workflow loads, before any job: one line, exit 2 (Snakemake printed
    10 to 81 lines around a schema error, and a model's unknown `pretrained` checkpoint was a
    MissingInputException naming a file, never the key)."""
    line = the_one_line(config_error(tmp_path, edit))
    assert re.fullmatch(r"config error: " + message, line), line


def test_command_line_config_values_are_yaml(tmp_path):
    """Snakemake passes nested --config values as strings ('recipe={epochs: 3}' gave '3', which
    failed the schema): they are read as YAML, as in a config file."""
    args = paper_args(tmp_path)
    out = snakemake("-n", "-p", *args, "recipe={epochs: 3}").stdout
    assert '"epochs": 3,' in out, out[-3000:]
    bad = snakemake("-n", *args, "recipe={epochs: three}", check=False)
    assert re.fullmatch(
        r"config error: recipe\.epochs: 'three' is not of type 'integer' .*", the_one_line(bad)
    )


def test_snakemake_lint():
    proc = snakemake(
        "--lint",
        "--configfile",
        str(ROOT / "demo/config.yaml"),
        "--replace-workflow-config",
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


@pytest.mark.parametrize(
    "command",
    [
        ["snakefmt", "--check", "--diff", "Snakefile", "rules"],
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "--diff", "."],
    ],
    ids=["snakefmt", "ruff-check", "ruff-format"],
)
def test_formatting_and_lint_clean(command):
    proc = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
