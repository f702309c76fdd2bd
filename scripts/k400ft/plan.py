"""What a fine-tune and its evaluation will cost on this node: projections, advice and cost.md.

The `plan` stage (rules/plan.smk, scripts/plan.py): `plan` samples the user's own train and
test videos (`sample_rows`, spread over the classes; both CSVs checked first, `read_splits`),
measures every model on them with the timing harness (k400ft.measure: the engine's step model
alone and fed by the real loader, the evaluation's loop, the two decoders), and turns the
figures into what the user reads: `project_run`, the wall time and GPU-hours of the whole run
for the configured GPU count (data parallel, assuming linear scaling: one all-reduce of 22M
parameters per optimiser step is small next to a step); `recommendations` and
`decoder_advice`, what follows from them (pure); `render_markdown`, cost.md beside cost.json.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from k400ft import dataplan, distributed, measure, schedule, video
from k400ft.io import atomic_write

DATA_BOUND = 0.10  # a fed step waiting for data more than this share of its time is data-bound
MEMORY_HEADROOM = 0.85  # batch growth is suggested up to this share of the GPU's memory
COMPILE_GAIN = 1.05  # recipe.compile is advised when the compiled model is this much faster
AUGMENT_SHARE = 0.2  # data.augment_compile is advised when eager augmentation takes this x model


def project_run(
    figures: dict,
    global_batch: int,
    epochs: int,
    gpus: int,
    train_videos: int,
    val_videos: int,
    eval_gpus: int | None = None,
    test_videos: int | None = None,
    unit: str = "GPU",
) -> dict:
    """Wall hours and GPU-hours of the whole fine-tune (accumulation x the loader-fed micro-step
    when measured, else the model alone; per-epoch validation at the forward rate; plus the
    fixed start: the process's imports and model build, the train and validation loaders'
    start) and of the evaluation (at the measured videos/s per GPU), on `gpus` (`eval_gpus`)
    processes. The fixed start includes compiling the augmentation's kernels, once per
    process (`augment_compile_s`)."""
    batch = figures["batch_videos"]
    fixed_s = (
        figures.get("import_s", 0.0)
        + figures.get("build_s", 0.0)
        + 2 * figures.get("loader_start_s", 0.0)
        + figures.get("augment_compile_s", 0.0)
    )
    accumulation = schedule.accumulation_steps(global_batch, batch, gpus)
    micro = figures.get("fed_step_s", figures["step_s"])
    fed = schedule.project_cost(
        accumulation * micro,
        train_videos,
        global_batch,
        epochs,
        gpus,
        val_videos,
        figures["val_clips_per_s"] * gpus,
        unit=unit,
    )
    alone = schedule.project_cost(
        accumulation * figures["step_s"], train_videos, global_batch, epochs, gpus, unit=unit
    )
    result = {
        "accumulation": accumulation,
        "train_wall_h": fed.wall_hours + fixed_s / 3600,
        "train_gpu_h": fed.gpu_hours + gpus * fixed_s / 3600,
        "start_s": fixed_s,
        "train_wall_h_model_alone": alone.wall_hours,
        "optimiser_steps": fed.steps_total,
        "describe": fed.describe(),
    }
    if "eval_videos_per_s" in figures and test_videos:
        hours = test_videos / (figures["eval_videos_per_s"] * (eval_gpus or 1)) / 3600
        result["eval_wall_h"] = hours
        result["eval_gpu_h"] = hours * (eval_gpus or 1)
    return result


def recommendations(
    figures: dict,
    *,
    node_cpus: int,
    procs_per_node: int,
    global_batch: int,
    gpus: int,
    transcode: bool,
    device: str,
) -> list[str]:
    """Plain advice that follows from the measured figures (pure: tested on its own)."""
    advice = []
    wait = figures.get("data_wait")
    if wait is not None:
        workers = figures.get("workers", 0)
        per_worker = figures["loader_clips_per_s"] / max(workers, 1)
        needed = math.ceil(figures["clips_per_s"] / per_worker)
        available = max(node_cpus // procs_per_node - 1, 1)
        if wait <= DATA_BOUND:
            advice.append(
                f"compute-bound: the loader keeps up (the step waits for data {100 * wait:.0f}% "
                "of its time)"
            )
        elif needed <= workers:
            advice.append(
                f"the step waits for data {100 * wait:.0f}% of its time although its {workers} "
                f"worker(s) make {figures['loader_clips_per_s']:.1f} clips/s alone (the model "
                f"takes {figures['clips_per_s']:.1f}): they share cores with the training "
                "process; give the job more CPUs than workers + 1 per process"
            )
        elif needed <= available:
            advice.append(
                f"data-bound (the step waits for data {100 * wait:.0f}% of its time): raise "
                f"data.num_workers to {needed} (this node has {node_cpus} cores for "
                f"{procs_per_node} process(es): up to {available} workers each)"
            )
        else:
            advice.append(
                f"data-bound (the step waits for data {100 * wait:.0f}% of its time) even with "
                f"every core: {needed} workers per process would keep up, this node has "
                f"{available} per process ({node_cpus} cores, {procs_per_node} process(es))"
            )
            if figures.get("augment_on") == "workers" and device == "cuda":
                advice.append("set data.augment_on: device (the workers then only decode and draw)")
            if not transcode:
                advice.append(
                    "turn on data.transcode: a short-keyframe copy makes each clip's decode "
                    "cheaper (README: short-keyframe copies)"
                )
    parts = figures.get("fed_parts")
    if parts and figures.get("augment_on") == "device" and not figures.get("augment_compile"):
        if parts["augment_ms"] > AUGMENT_SHARE * parts["model_ms"]:
            advice.append(
                f"set data.augment_compile: on: the augmentation on the device takes "
                f"{parts['augment_ms']:.1f} ms per step beside the model's "
                f"{parts['model_ms']:.1f} (fused kernels move about 20x fewer bytes)"
            )
    compiled, eager = figures.get("compiled_clips_per_s"), figures["clips_per_s"]
    if compiled and not figures.get("compile") and compiled > COMPILE_GAIN * eager:
        advice.append(
            f"set recipe.compile: true: the compiled model alone makes {compiled:.1f} clips/s, "
            f"{100 * (compiled / eager - 1):.0f}% more than eager ({eager:.1f})"
        )
    peak, total = figures.get("peak_mem_gib"), figures.get("gpu_mem_gib")
    if peak and total:
        batch = figures["batch_videos"]
        fits = int(batch * MEMORY_HEADROOM * total / peak)
        per_gpu = global_batch // gpus if global_batch % gpus == 0 else 0
        options = [d for d in range(1, per_gpu + 1) if per_gpu % d == 0 and d <= fits]
        if options and max(options) > batch:
            advice.append(
                f"finetune.batch_per_gpu can grow to {max(options)} (peak {peak:.1f} GiB of "
                f"{total:.0f} GiB at {batch}; a divisor of global_batch / GPUs = "
                f"{global_batch // gpus}, so fewer accumulation steps, the same recipe)"
            )
    return advice


def decoder_advice(compared: dict[str, Any], configured: str) -> list[str]:
    """Which `data.decoder` the comparison on the user's sample argues for (pure)."""
    ms, items = compared["ms_per_item"], compared["items"]
    lost = compared["cannot_read"]["pyav"] - compared["cannot_read"]["decord"]
    if lost > 0:
        return [
            f"PyAV cannot read {lost} sampled video(s) that decord reads: keep data.decoder: decord"
        ]
    if compared["differing"]:
        return [
            f"decord and PyAV gave different frames for {compared['differing']} of {items} "
            "sampled items (open GOPs: PyAV's are the frames asked for, README Video "
            f"decoders), e.g. {compared['differing_videos'][0]}"
            + ("; set data.decoder: pyav" if configured == "decord" else "")
        ]
    saving = {
        kind: 1 - ms["pyav"][kind] / ms["decord"][kind]
        for kind in ("train", "test")
        if ms["pyav"][kind] and ms["decord"][kind]
    }
    if configured == "decord" and saving.get("train", 0) > 0:
        return [
            f"data.decoder: pyav gives the same frames on all {items} sampled items with "
            f"{_less_or_more(saving['train'])} CPU per train item"
            + (f" and {_less_or_more(saving['test'])} per test item" if "test" in saving else "")
        ]
    return []


def _less_or_more(saving: float) -> str:
    """A relative saving in words: 0.28 -> '28% less', -0.48 -> '48% more'."""
    return f"{100 * abs(saving):.0f}% {'less' if saving >= 0 else 'more'}"


def sample_rows(rows: list[tuple[str, int]], count: int, seed: int = 0) -> list[tuple[str, int]]:
    """Up to `count` rows spread over the classes: round-robin over the labels (sorted), each
    label's rows in a seeded random order."""
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    queues = [
        [group[i] for i in rng.permutation(len(group))] for _, group in sorted(by_label.items())
    ]
    picked: list[tuple[str, int]] = []
    while len(picked) < min(count, len(rows)):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop())
    return picked


def read_splits(
    spec: dict, train_csv: str | Path, test_csv: str | Path
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The rows of the user's train and test CSVs, both checked before anything is measured
    (SplitCSVError naming the file, SpecError naming the key): every line and label, enough
    train videos for one batch of every model (the fed step times whole batches, from a
    sample of `plan.videos`), and at least 2 test videos (the evaluation's timing starts
    after one warm-up video)."""
    batch, name = max((m["finetune"]["batch_per_gpu"], n) for n, m in spec["models"].items())
    if spec["plan"]["videos"] < batch:
        raise schedule.SpecError(
            f"plan.videos {spec['plan']['videos']} is smaller than one batch of {name} "
            f"(finetune.batch_per_gpu {batch}): the plan times whole batches"
        )
    train_rows = video.read_split_csv(
        train_csv,
        spec["num_classes"],
        min_videos=batch,
        need=f"the plan times batches of {batch} (finetune.batch_per_gpu of {name})",
    )
    test_rows = video.read_split_csv(
        test_csv,
        spec["num_classes"],
        min_videos=2,
        need="the plan times the evaluation on at least 2 videos, the first untimed",
    )
    return train_rows, test_rows


def render_markdown(plan: dict) -> str:
    """cost.md: the measured figures, the projections and the advice, per model."""
    lines = [
        "# Planned cost of the fine-tunes and evaluations",
        "",
        f"Measured on {plan['node']['device']} ({plan['node']['cpus']} CPU cores), "
        f"{plan['sample']['train_videos']} train and {plan['sample']['test_videos']} test videos "
        "of your splits; projections for the configured launch "
        f"({_counted(plan['launch']['gpus'], plan['launch']['unit'])} for fine-tuning, "
        f"{plan['launch']['eval_gpus']} for evaluation, {plan['launch']['epochs']} epochs of "
        f"{plan['launch']['train_videos']} videos).",
        "",
        "| Model | batch / GPU | model alone (clips/s) | fed by the loader (clips/s) | data wait "
        "| fine-tune wall | fine-tune GPU-h | evaluation wall | evaluation GPU-h | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in plan["models"].items():
        f, p = model["figures"], model["projection"]
        memory = f"{f['peak_mem_gib']:.1f} GiB" if "peak_mem_gib" in f else "-"
        lines.append(
            f"| {name} | {f['batch_videos']} | {f['clips_per_s']:.1f} | "
            f"{f.get('fed_clips_per_s', float('nan')):.1f} | {100 * f.get('data_wait', 0):.0f}% | "
            f"{_hours(p['train_wall_h'])} | {p['train_gpu_h']:.1f} | "
            f"{_hours(p.get('eval_wall_h', 0))} | {p.get('eval_gpu_h', 0):.2f} | {memory} |"
        )
    parted = {
        name: m["figures"] for name, m in plan["models"].items() if "fed_parts" in m["figures"]
    }
    if parted:
        lines += [
            "",
            "The fed step taken apart (median ms, each part waited for), and the engine's "
            "pipelined fed step against the model alone on clips already on the device:",
            "",
            "| Model | loader wait | host-to-device | augmentation | model step | fed step "
            "| fed / alone | compiled alone (clips/s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, f in parted.items():
            p = f["fed_parts"]
            compiled = f.get("compiled_clips_per_s")
            augment = f"{p['augment_ms']:.1f}" if f["augment_on"] == "device" else "in the workers"
            lines.append(
                f"| {name} | {p['wait_ms']:.1f} | {p['copy_ms']:.1f} | {augment} | "
                f"{p['model_ms']:.1f} | {1e3 * f['fed_step_s']:.1f} | "
                f"{100 * f['fed_clips_per_s'] / f['clips_per_s']:.0f}% | "
                + (f"{compiled:.1f} |" if compiled else "- |")
            )
        for name, f in parted.items():
            if f["augment_on"] != "device":
                continue
            how = (
                f"compiled kernels: {f['augment_graphs']} graphs, {f['augment_compile_s']:.0f} s "
                "of compiling per process, paid once in its first steps (in the fixed start)"
                if f.get("augment_compile")
                else "eager ops (data.augment_compile off)"
            )
            lines.append(f"\n{name}: the augmentation on the device runs {how}.")
    compared = plan.get("decoders")
    if compared:
        lines += [
            "",
            f"Decoders on the sample ({compared['items']} items, CPU ms per item; "
            f"data.decoder is {plan['launch']['decoder']}):",
            "",
            "| decoder | train item | test item | cannot read |",
            "|---|---|---|---|",
        ]
        for name, ms in compared["ms_per_item"].items():
            cells = [f"{ms[k]:.1f}" if ms[k] is not None else "-" for k in ("train", "test")]
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {compared['cannot_read'][name]} |")
        lines.append(f"\nItems whose frames differ between the decoders: {compared['differing']}.")
    lines += ["", "## What to do", ""]
    for name, model in plan["models"].items():
        for advice in model["advice"]:
            lines.append(f"- {name}: {advice}")
    for advice in plan.get("decoder_advice", []):
        lines.append(f"- decoder: {advice}")
    lines.append("")
    if plan.get("data"):  # Kinetics-400 from its archive: rules/fetch.smk's plan_data
        lines += dataplan.render_lines(plan["data"])
    return "\n".join(lines)


def _counted(count: int, unit: str) -> str:
    """'1 GPU', '8 GPUs', '1 CPU process', '2 CPU processes' (`unit` as cost.json names it)."""
    noun = unit.replace("-", " ")
    if count != 1:
        noun += "es" if noun.endswith("s") else "s"
    return f"{count} {noun}"


def _hours(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.1f} min"


def plan(
    spec: dict,
    device: str,
    train_csv: str,
    test_csv: str,
    threads: int,
    out_dir: str,
    data_plan: dict | None = None,
) -> dict:
    """Measure every model of `spec` on a sample of the splits and write cost.json / cost.md
    (with the data preparation's figures `data_plan`, when the data came from the archive).

    spec: {models: {name: {arch, finetune: {global_batch, batch_per_gpu}}}, recipe, data,
    evaluate, num_classes, launch: {finetune, evaluate}, plan: {videos, test_videos, steps,
    warmup}}."""
    import_s = measure.process_age()  # a fine-tune process pays the same imports before it starts
    torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    launch, settings = spec["launch"], spec["plan"]
    procs = launch["finetune"]["procs_per_node"]
    gpus = launch["finetune"]["nodes"] * procs
    eval_gpus = launch["evaluate"]["nodes"] * launch["evaluate"]["procs_per_node"]
    workers = distributed.loader_workers(threads, procs)  # what each fine-tune process gets
    train_rows, test_rows = read_splits(spec, train_csv, test_csv)
    record: dict[str, Any] = {
        "node": {
            "device": torch.cuda.get_device_name(torch_device)
            if torch_device.type == "cuda"
            else "cpu",
            "cpus": threads,  # the job's CPUs on this node
            "machine_cpus": os.cpu_count(),
        },
        "launch": {
            "gpus": gpus,
            "eval_gpus": eval_gpus,
            "unit": "GPU" if torch_device.type == "cuda" else "CPU-process",
            "epochs": spec["recipe"]["epochs"],
            "train_videos": len(train_rows),
            "test_videos": len(test_rows),
            "workers_per_process": workers,
            "augment_on": schedule.augment_placement(
                spec["data"].get("augment_on", "auto"), torch_device
            ),
            "transcode": bool(spec.get("transcode")),
            "decoder": spec["data"].get("decoder", "decord"),
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        train_sample = Path(tmp) / "train.csv"
        test_sample = Path(tmp) / "test.csv"
        video.write_split_csv(train_sample, sample_rows(train_rows, settings["videos"]))
        video.write_split_csv(test_sample, sample_rows(test_rows, settings["test_videos"] + 1))
        record["sample"] = {
            "train_videos": min(settings["videos"], len(train_rows)),
            "test_videos": min(settings["test_videos"] + 1, len(test_rows)),
        }
        for name, model in spec["models"].items():
            model_spec = {
                "arch": model["arch"],
                "recipe": spec["recipe"],
                "data": spec["data"],
                "num_classes": spec["num_classes"],
                "evaluate": spec["evaluate"],
            }
            distributed.set_cpu_threads(torch_device, launch["finetune"].get("cpu_threads"))
            figures = measure.measure_model(
                model_spec,
                torch_device,
                spec["recipe"]["precision"],
                batch=model["finetune"]["batch_per_gpu"],
                steps=settings["steps"],
                warmup=settings["warmup"],
                compile_model=bool(spec["recipe"]["compile"]) and torch_device.type == "cuda",
                csv=train_sample,
                workers=workers,
            )
            distributed.set_cpu_threads(torch_device, launch["evaluate"].get("cpu_threads"))
            figures.update(
                measure.measure_evaluation(model_spec, torch_device, test_sample, workers)
            )
            figures["import_s"] = import_s
            projection = project_run(
                figures,
                model["finetune"]["global_batch"],
                spec["recipe"]["epochs"],
                gpus,
                len(train_rows),
                len(test_rows),  # per-epoch validation runs on val.csv, which test.csv is
                eval_gpus,
                len(test_rows),
                record["launch"]["unit"],
            )
            record["models"][name] = {
                "figures": figures,
                "projection": projection,
                "advice": recommendations(
                    figures,
                    node_cpus=threads,
                    procs_per_node=procs,
                    global_batch=model["finetune"]["global_batch"],
                    gpus=gpus,
                    transcode=record["launch"]["transcode"],
                    device=torch_device.type,
                ),
            }
        record["decoders"] = measure.compare_decoders(train_sample, test_sample, spec["data"])
    record["decoder_advice"] = decoder_advice(record["decoders"], record["launch"]["decoder"])
    if data_plan:
        record["data"] = data_plan
    out = Path(out_dir)
    with atomic_write(out / "cost.json", "w") as handle:
        json.dump(record, handle, indent=2)
    with atomic_write(out / "cost.md", "w") as handle:
        handle.write(render_markdown(record))
    return record
