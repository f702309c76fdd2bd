# Config validation and every input/param function the rules use.
import json
from pathlib import Path

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")

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


def launcher(stage):
    """The torchrun command for a GPU stage (config `launch.<stage>`).

    One node: torchrun --standalone. Several nodes (inside a SLURM allocation): one torchrun
    per node through srun, rendezvous (c10d) on the first node of the allocation."""
    spec = config["launch"][stage]
    nproc = spec["procs_per_node"]
    if spec["nodes"] == 1:
        return f"torchrun --standalone --nnodes=1 --nproc-per-node={nproc}"
    return (
        f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 torchrun --nnodes={spec['nodes']}"
        f" --nproc-per-node={nproc} --rdzv-backend=c10d"
        ' --rdzv-endpoint="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):29500"'
        ' --rdzv-id="$SLURM_JOB_ID"'
    )


def gpus(stage):
    """GPUs per node a stage asks the scheduler for (0 on CPU)."""
    spec = config["launch"][stage]
    return spec["procs_per_node"] if spec["device"] == "cuda" else 0


def row_spec(row):
    return config["models"].get(row) or config["released"][row]


def all_outputs():
    return [
        *rules.report.output,
    ]
