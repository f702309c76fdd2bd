# Every input/param function the rules use (the config itself: rules/config.smk).
import itertools
import json
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError


include: "config.smk"


RESULTS = config["results"]
MODELS = list(config["models"])
RELEASED = list(config["released"])
ROWS = MODELS + RELEASED  # every row of the table = every evaluated model


wildcard_constraints:
    ckpt="|".join(config["checkpoints"]) or "NONE",
    model="|".join(MODELS) or "NONE",
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
    return config["models"].get(row) or config["released"][row]


ON_DEMAND = ("all", "plan")  # rules `all` does not ask for: run by naming them


def target_wildcards():
    """The values each wildcard takes among the targets of `all` (`all_outputs`)."""
    used = [spec["pretrained"] for spec in config["models"].values()]
    used += [spec["checkpoint"] for spec in config["released"].values()]
    return {
        "ckpt": sorted(set(used)),
        "model": MODELS,
        "row": ROWS,
        "shard": range(config["data"]["transcode"]["shards"]),
    }


def all_outputs():
    """Every declared output of every rule but ON_DEMAND's, for the wildcard values the config
    names (and each rule's own constraints): `all` asks for each, so a missing one is remade
    and everything after it follows. Snakemake alone skips a missing intermediate file when
    the files after it exist (snakemake#1978): a `--forcerun evaluate` killed after Snakemake
    had removed the evaluation's outputs left the old table in place, without a word. A new
    rule's outputs join by themselves; a new wildcard needs its values in target_wildcards.
    """
    values, targets = target_wildcards(), []
    for stage in workflow.rules:
        if stage.name in ON_DEMAND:
            continue
        unknown = sorted(stage.wildcard_names - set(values))
        if unknown:
            raise WorkflowError(
                f"no values for wildcard(s) {', '.join(unknown)} of {stage.name} among the "
                "targets of `all`: add them to target_wildcards() in rules/common.smk"
            )
        names = sorted(stage.wildcard_names)
        for combination in itertools.product(*(values[name] for name in names)):
            wildcards = dict(zip(names, combination))
            made = [path.apply_wildcards(wildcards) for path in stage.output]
            targets += [path for path in made if stage.is_producer(path)]
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


# checkpoints stage
def checkpoint_lock(ckpt):
    """The trust-on-first-use record of checkpoint `ckpt`'s sha256 (when none is pinned)."""
    return f"{RESULTS}/checkpoints/{ckpt}.sha256"


def checkpoint_source(wildcards):
    """A checkpoint given by `path` is this rule's input (so the demo can make it)."""
    spec = config["checkpoints"][wildcards.ckpt]
    return [spec["path"]] if "path" in spec else []


# data stage
def kinetics_tree(wildcards):
    """The demo's tree is made by rules/demo.smk; a user's tree is just there."""
    return rules.demo_videos.output if "demo" in config else []


# finetune stage
NOT_FINETUNE_DATA = ("num_workers", "transcode")


def finetune_params(model):
    """Exactly what changes the fine-tuned weights (evaluation settings are not here)."""
    spec = config["models"][model]
    return {
        "arch": spec["arch"],
        "finetune": spec["finetune"],
        "recipe": config["recipe"],
        # not the loader's workers, nor the copies' settings (data.transcode reaches the
        # fine-tune as its inputs: a paper run without copies keeps exactly these params)
        "data": {k: v for k, v in config["data"].items() if k not in NOT_FINETUNE_DATA},
        "num_classes": config["kinetics"]["num_classes"],
        "pretrained_format": config["checkpoints"][spec["pretrained"]]["format"],
        **cpu_threads("finetune"),
    }


# transcode stage
def finetune_split(split):
    """The fine-tune's train or val CSV: the short-keyframe copies' (data.transcode on)
    or the splits stage's own. Evaluation always reads the originals."""
    if config["data"]["transcode"]["enabled"]:
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
    if wildcards.row in config["models"]:
        return rules.finetune.output.weights.format(model=wildcards.row)
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
            if row in config["models"]
            else config["checkpoints"][spec["checkpoint"]]["format"]
        ),
        **cpu_threads("evaluate"),
    }


# report stage
def report_params():
    """What the table needs besides the metrics files."""
    return {
        "rows": {
            row: {
                "name": row_spec(row)["name"],
                "pretrain_epochs": row_spec(row)["pretrain_epochs"],
                "published": row_spec(row)["published"],
                "finetuned": row in config["models"],
            }
            for row in ROWS
        },
        "num_frames": config["data"]["num_frames"],
        "evaluate": config["evaluate"],
    }
