# Every input/param function the rules use (the config itself: rules/config.smk).
import json
import os
import shlex
import subprocess
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.io import is_flagged


include: "config.smk"


RESULTS = config["results"]
MODELS = list(config["models"])
RELEASED = list(config["released"])
# One fine-tuning run per model and seed (finetune.seeds): seed 0's keeps its model's name, so
# a one-seed run has the paths it always had, and adding a seed adds runs without renaming any.
RUNS = {
    (model if seed == 0 else f"{model}_seed{seed}"): (model, seed)
    for model in MODELS
    for seed in config["finetune"]["seeds"]
}
# every evaluated run: a fine-tune of ours or released weights
ROWS = list(RUNS) + RELEASED


wildcard_constraints:
    ckpt="|".join(config["checkpoints"]) or "NONE",
    run="|".join(RUNS) or "NONE",
    row="|".join(ROWS) or "NONE",


def as_json(value):
    """Params go to the scripts as one JSON argument: one source of truth, no re-typing."""
    return json.dumps(value, sort_keys=True)


# the launcher script, relative to the working directory (params stay the same in any checkout)
TORCHRUN = os.path.relpath(
    Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parent
    / "scripts"
    / "torchrun.py"
)


def launcher(stage):
    """The torchrun command for a GPU stage (config `launch.<stage>`), exec'd by the rule's shell.

    `exec`: torchrun replaces the shell, so a SIGTERM to the job (SLURM --signal before the time
    limit, preemption) reaches torchrun, which forwards it to the trainers and waits for them to
    save `last`; a shell in between would die at once and take them down with it.
    One node: torchrun --standalone. Several nodes, inside a SLURM job in the plugin's MPI form
    (see launch_resources; the job's shell runs on the first node of the allocation): one
    torchrun per node through srun (a step gets all the job's CPUs, memory and GPUs on its
    nodes), c10d rendezvous hosted by the first node on a port from the job id."""
    spec = config["launch"][stage]
    nproc = spec["procs_per_node"]
    nodes = spec["nodes"]
    # torchrun forwards these to the trainers (by default not SIGUSR1, which would kill
    # torchrun and orphan a trainer that trains on unseen): they save `last` and exit 75.
    # scripts/torchrun.py is torchrun in-process whose failed run ends with one summary line.
    torchrun = (
        f"python {TORCHRUN} --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    )
    if nodes == 1:
        return f"exec {torchrun} --standalone --nnodes=1 --nproc-per-node={nproc}"
    return (
        f"exec srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1"
        f" {torchrun} --nnodes={nodes} --nproc-per-node={nproc} --rdzv-backend=c10d"
        f' --rdzv-id="${{SLURM_JOB_ID:?launch.{stage}.nodes > 1 runs in a SLURM job}}"'
        ' --rdzv-endpoint="$(hostname):$((29500 + SLURM_JOB_ID % 1000))"'
    )


def gpus(stage):
    """GPUs per node a stage asks the scheduler for (0 on CPU)."""
    spec = config["launch"][stage]
    return spec["procs_per_node"] if spec["device"] == "cuda" else 0


# What the test views depend on (augmentation and loader settings do not change them; the
# decoder can: open-GOP files, README "Video decoders").
TEST_DATA_KEYS = (
    "num_frames",
    "sampling_rate",
    "short_side_size",
    "mean",
    "std",
    "decoder",
)


def launch_threads(stage):
    """CPUs per node of a torchrun stage: each process and its DataLoader workers."""
    procs = config["launch"][stage]["procs_per_node"]
    return procs * (config["data"]["num_workers"] + 1)


def cpu_threads(stage):
    """On the CPU device, the stage's intra-op thread count (`launch.<stage>.cpu_threads`), a
    part of its spec: float results depend on it, and the job's OMP_NUM_THREADS (Snakemake:
    the job's threads) must not decide them. Nothing on CUDA, where it changes nothing.
    """
    spec = config["launch"][stage]
    return {"cpu_threads": spec["cpu_threads"]} if spec["device"] == "cpu" else {}


def launch_resources(stage):
    """What a torchrun stage asks the scheduler for (snakemake-executor-plugin-slurm 2.x).

    One node: `gpu` GPUs (sbatch --gpus; locally `--resources gpu=N` bounds concurrency).
    Several nodes: the plugin's MPI form (`mpi`: the job script runs the rule's shell itself,
    whose srun starts one torchrun per node) with `tasks` = `nodes` (sbatch --nodes=N --ntasks=N),
    the GPUs per node as GRES (--gres=gpu:G; --gpus would be a total over the nodes), and
    tasks_per_gpu=0 so that the plugin does not turn `tasks` into --ntasks-per-gpu."""
    nodes = config["launch"][stage]["nodes"]
    if nodes == 1:
        return {"gpu": gpus(stage), "nodes": 1}
    resources = {"nodes": nodes, "tasks": nodes, "mpi": "srun", "tasks_per_gpu": 0}
    if gpus(stage):
        resources["gres"] = f"gpu:{gpus(stage)}"
    return resources


def row_spec(row):
    """The config entry of a row of the table (a model or released weights) or of an
    evaluated run (its model's)."""
    if row in RUNS:
        return config["models"][RUNS[row][0]]
    return config["models"].get(row) or config["released"][row]


ON_DEMAND = ("all", "plan")  # rules `all` does not ask for: run by naming them


def target_jobs():
    """The wildcards of every job of a rule with wildcards that `all` asks for (what the
    config names; a rule without wildcards is one job). Two rules may give one wildcard
    different values (shard), and one wildcard's values may follow another's (a split's
    parts), so each rule says its own."""
    used = [spec["pretrained"] for spec in config["models"].values()]
    used += [spec["checkpoint"] for spec in config["released"].values()]
    parts = [
        {"split": split, "index": name.split("_")[1]}
        for split in [*PART_SPLITS, "replacement"]
        for name in part_names(split)
    ]
    return {
        "checkpoint": [{"ckpt": ckpt} for ckpt in dict.fromkeys(used)],
        "demo_checkpoint": [{"ckpt": ckpt} for ckpt in demo_checkpoints()],
        "kinetics_list": [{"split": split} for split in PART_SPLITS],
        "kinetics_fetch": parts,
        "kinetics_extract": parts,
        "kinetics_verify": [{"split": split} for split in PART_SPLITS],
        "kinetics_resize": [{"shard": n} for n in range(KINETICS["resize"]["shards"])],
        "transcode": [
            {"shard": n} for n in range(config["data"]["transcode"]["shards"])
        ],
        "finetune": [{"run": run} for run in RUNS],
        "evaluate": [{"row": row} for row in ROWS],
    }


def all_outputs():
    """Every declared output of every rule but ON_DEMAND's, for every job of it the config
    names (`target_jobs`), temp() outputs aside (deleted once used, as the archive's parts):
    `all` asks for each, so a missing one is remade and everything after it follows.
    Snakemake alone skips a missing intermediate file when the files after it exist
    (snakemake#1978): a `--forcerun evaluate` killed after Snakemake had removed the
    evaluation's outputs left the old table in place, without a word. A new rule without
    wildcards joins by itself; one with wildcards needs its jobs in target_jobs."""
    jobs, targets = target_jobs(), []
    for stage in workflow.rules:
        if stage.name in ON_DEMAND:
            continue
        if stage.wildcard_names and stage.name not in jobs:
            raise WorkflowError(
                f"{stage.name} has wildcards ({', '.join(sorted(stage.wildcard_names))}): "
                "say which of its jobs `all` asks for in target_jobs() in rules/common.smk"
            )
        for wildcards in jobs.get(stage.name, [{}]):
            targets += [
                path.apply_wildcards(wildcards)
                for path in stage.output
                if not is_flagged(path, "temp")
            ]
    return targets


# demo stage
def demo_checkpoints():
    """The checkpoints the demo makes: those whose `path` is where rule demo_checkpoint writes."""
    return [
        ckpt
        for ckpt, spec in config["checkpoints"].items()
        if spec.get("path") == f"{RESULTS}/pretrained/{ckpt}.pth"
    ]


def demo_pretrained(ckpt):
    """Format, arch and pretext pretraining of the model that demo checkpoint `ckpt` pretrains."""
    model = next(m for m in config["models"].values() if m["pretrained"] == ckpt)
    shape = ("patchify", "img_size", "num_frames", "patch_size", "tubelet_size")
    shape += ("embed_dim", "depth", "num_heads", "mlp_ratio")  # not fine-tune-only keys
    arch = {key: model["arch"][key] for key in shape}
    data = {key: config["data"][key] for key in ("sampling_rate", "mean", "std")}
    pretrain = {**config["demo"]["pretrain"], "seed": config["demo"]["seed"], **data}
    return {
        "format": config["checkpoints"][ckpt]["format"],
        "arch": arch,
        "pretrain": pretrain,
    }


def demo_archive_folder():
    """Where the demo writes its archive: the folder of its file: base URL."""
    url = KINETICS["archive"]["base_url"]
    if not (ARCHIVE and url.startswith("file:") and not url.startswith("file://")):
        raise ValueError(
            "the demo's kinetics.source must be archive and kinetics.archive.base_url a "
            f"relative file: URL (the folder its archive is written to), got {url!r}"
        )
    return url.removeprefix("file:").rstrip("/")


def archive_folder(replacement):
    """The archive's folder, from the path of its replacement archive in it (a param derived
    from an output, as Snakemake's lint asks of a path prefix)."""
    return replacement.removesuffix(KINETICS["archive"]["replacement"]).rstrip("/")


# checkpoints stage
def checkpoint_lock(ckpt):
    """The trust-on-first-use record of checkpoint `ckpt`'s sha256 (when none is pinned)."""
    return f"{RESULTS}/checkpoints/{ckpt}.sha256"


def checkpoint_source(wildcards):
    """A checkpoint given by `path` is this rule's input (so the demo can make it)."""
    spec = config["checkpoints"][wildcards.ckpt]
    return [spec["path"]] if "path" in spec else []


# Kinetics-400 from its public archive (kinetics.source: archive): fetch -> extract -> resize
KINETICS = config["kinetics"]
ARCHIVE = KINETICS["source"] == "archive"
ARCHIVES = f"{KINETICS['root']}/archives"  # the parts, while they are kept
# why a part was not fetched, one record per part (read by the summary of missing parts)
FETCH_FAILED = f"{RESULTS}/kinetics/fetch/failed"
PART_SPLITS = list(KINETICS["archive"]["parts"])  # train, val: the paper tests on val
RESIZE = ARCHIVE and KINETICS["resize_short_side"] is not None
# with data.transcode on, the resize's one encode makes the short keyframes too
TRANSCODE = config["data"]["transcode"]["enabled"] and not RESIZE
# what the splits stage reads of the kinetics section (not where the tree came from)
TREE_KEYS = ("root", "layout", "annotations", "video_dirs", "extensions", "num_classes")


def kinetics_root(path):
    """`path` (a config path) under kinetics.root, or as given when absolute."""
    return os.path.join(KINETICS["root"], path)


def split_folder(split, extracted=False):
    """The split's folder of the tree the splits stage reads, or (extracted, with the resize
    on) the folder its originals are extracted into."""
    folder = KINETICS["video_dirs"][split]
    if extracted and RESIZE:
        return kinetics_root(os.path.join("extracted", folder))
    return kinetics_root(folder)


def archive_url(path):
    """A file of the archive: `path` under kinetics.archive.base_url (the scripts resolve it)."""
    return f"{KINETICS['archive']['base_url'].rstrip('/')}/{path}"


def archive_made(wildcards):
    """The demo's archive is made by rules/demo.smk; the public one is just there."""
    return rules.demo_archive.output if "demo" in config else []


def part_names(split):
    """The part files of a split (or the replacement archive: one part)."""
    count = 1 if split == "replacement" else KINETICS["archive"]["parts"][split]
    return [f"part_{index}" for index in range(count)]


def fetch_inputs(wildcards):
    """A split's part needs its list file; every part waits for the data plan, which refuses
    when the disk cannot hold the peak (ancient: a new plan never re-fetches a part)."""
    inputs = {"plan": ancient(rules.plan_data.output.json)}
    if wildcards.split != "replacement":
        inputs["list"] = rules.kinetics_list.output[0].format(split=wildcards.split)
    return inputs


def fetch_source(wildcards, input):
    """The fetch script's source arguments: the list file and the part's line, or the URL."""
    if wildcards.split == "replacement":
        return f"--url {shlex.quote(archive_url(KINETICS['archive']['replacement']))}"
    return (
        f"--list {shlex.quote(input.list)}"
        f" --list-url {shlex.quote(archive_url(KINETICS['archive']['lists'][wildcards.split]))}"
        f" --index {wildcards.index} --parts {KINETICS['archive']['parts'][wildcards.split]}"
    )


def extract_inputs(wildcards):
    """A part; the replacement archive also waits for every train part (it goes over them)."""
    part = rules.kinetics_fetch.output.part.format(**wildcards)
    if wildcards.split != "replacement":
        return {"part": part}
    return {"part": part, "train": part_manifests("train")}


def part_manifests(split):
    return [
        rules.kinetics_extract.output.manifest.format(
            split=split, index=name.split("_")[1]
        )
        for name in part_names(split)
    ]


def resize_settings():
    """The resize's encoder settings (k400ft.encode.Settings fields): kinetics.resize and the
    short side; with data.transcode on, its keyframe interval and tune (one encode)."""
    resize, transcode = KINETICS["resize"], config["data"]["transcode"]
    keyframes = transcode["enabled"]
    return {
        "short_side": KINETICS["resize_short_side"],
        "crf": resize["crf"],
        "preset": resize["preset"],
        "tune": transcode["tune"] if keyframes else resize["tune"],
        "keyint": transcode["keyint"] if keyframes else None,
    }


def plan_data_spec():
    """What the data plan needs and what changes it."""
    archive = KINETICS["archive"]
    return {
        "base_url": archive["base_url"],
        "lists": archive["lists"],
        "parts": archive["parts"],
        "replacement": archive["replacement"],
        "connections": archive["connections"],
        "keep_archives": KINETICS["keep_archives"],
        "root": KINETICS["root"],
        "folders": [ARCHIVES, kinetics_root("extracted")]
        + [split_folder(split) for split in PART_SPLITS],
        "resize": resize_settings() if RESIZE else None,
        "resize_videos": config["plan"]["resize_videos"],
    }


def missing_spec():
    """What the summary of missing parts reads (onerror in rules/fetch.smk)."""
    return {
        "parts": {split: part_names(split) for split in [*PART_SPLITS, "replacement"]},
        "archives": ARCHIVES,
        "manifests": f"{RESULTS}/kinetics/extract",
        "failures": FETCH_FAILED,
        "output": f"{RESULTS}/kinetics/missing.json",
    }


def split_counts():
    return [
        rules.kinetics_verify.output[0].format(split=split) for split in PART_SPLITS
    ]


# data stage
def kinetics_tree(wildcards):
    """What the splits stage waits for: the resized tree (its report), the extracted one (its
    counts) or, for a user's copy (kinetics.source: local), nothing."""
    if RESIZE:
        return rules.kinetics_resize_gather.output
    return split_counts() if ARCHIVE else []


# finetune stage
NOT_FINETUNE_DATA = ("num_workers", "transcode")


def finetune_params(run):
    """Exactly what changes run `run`'s fine-tuned weights: its model's, and its seed as the
    recipe's `seed` (evaluation settings are not here)."""
    model, seed = RUNS[run]
    spec = config["models"][model]
    return {
        "arch": spec["arch"],
        "finetune": spec["finetune"],
        "recipe": {**config["recipe"], "seed": seed},
        # not the loader's workers, nor the copies' settings (data.transcode reaches the
        # fine-tune as its inputs: a paper run without copies keeps exactly these params)
        "data": {k: v for k, v in config["data"].items() if k not in NOT_FINETUNE_DATA},
        "num_classes": config["kinetics"]["num_classes"],
        "pretrained_format": config["checkpoints"][spec["pretrained"]]["format"],
        **cpu_threads("finetune"),
    }


# transcode stage
def finetune_split(split):
    """The fine-tune's train or val CSV: the short-keyframe copies' (data.transcode on and
    no resize, which makes them in its one encode) or the splits stage's own. Evaluation
    reads the splits stage's."""
    if TRANSCODE:
        return rules.transcode_gather.output[split]
    return rules.splits.output[split]


# plan stage
def plan_params():
    """What changes the plan's estimate: the models' sizes and batches, the recipe, the data
    path (workers and the copies included), the views, the launch and the plan's own sample.
    """
    return {
        "models": {
            name: {"arch": spec["arch"], "finetune": spec["finetune"]}
            for name, spec in config["models"].items()
        },
        "recipe": config["recipe"],
        "data": {k: v for k, v in config["data"].items() if k != "transcode"},
        "transcode": config["data"]["transcode"]["enabled"],
        "evaluate": config["evaluate"],
        "num_classes": config["kinetics"]["num_classes"],
        "launch": config["launch"],
        "plan": config["plan"],
    }


# evaluate stage
def eval_weights(wildcards):
    """Our fine-tuned weights, or a released checkpoint for an eval-only row."""
    if wildcards.row in RUNS:
        return rules.finetune.output.weights.format(run=wildcards.row)
    return (
        f"{RESULTS}/checkpoints/{config['released'][wildcards.row]['checkpoint']}.pth"
    )


def eval_params(row):
    """Exactly what changes the evaluation of `row` (never fine-tuning settings)."""
    spec = row_spec(row)
    return {
        "arch": spec["arch"],
        "data": {k: config["data"][k] for k in TEST_DATA_KEYS},
        "evaluate": config["evaluate"],
        "num_classes": config["kinetics"]["num_classes"],
        "weights_format": (
            "ours"
            if row in RUNS
            else config["checkpoints"][spec["checkpoint"]]["format"]
        ),
        **cpu_threads("evaluate"),
    }


# report stage
def report_params():
    """What the table needs besides the metrics files: per row (a model or released
    weights), its evaluated runs with their seeds (null for released weights)."""
    runs = {row: {row: None} for row in RELEASED}
    for run, (model, seed) in RUNS.items():
        runs.setdefault(model, {})[run] = seed
    return {
        "rows": {
            row: {
                "name": row_spec(row)["name"],
                "pretrain_epochs": row_spec(row)["pretrain_epochs"],
                "published": row_spec(row)["published"],
                "finetuned": row in config["models"],
                "runs": runs[row],
            }
            for row in MODELS + RELEASED
        },
        "num_frames": config["data"]["num_frames"],
        "evaluate": config["evaluate"],
    }
