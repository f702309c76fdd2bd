# The extracted videos -> short side kinetics.resize_short_side (320: VideoMAE's DATASET.md),
# H.264 through the encoder path the transcode stage uses, into the split folders the splits
# stage reads (scripts/kinetics.py resize, k400ft.resize). One job per shard (every shards-th
# video, known before the extraction, no checkpoint); each output is written atomically and
# kept across runs, a video that fails keeps its original and is listed with its reason in
# report.json (with a PSNR sample and the core-seconds). With data.transcode on, the same
# encode makes its short keyframes: no second encode (rules/transcode.smk is then idle).

if RESIZE:

    localrules:
        kinetics_resize_gather,

    wildcard_constraints:
        shard="[0-9]+",

    rule kinetics_resize:
        input:
            split_counts(),
        output:
            shard=f"{RESULTS}/kinetics/resize/shards/{{shard}}.json",
        log:
            f"{RESULTS}/logs/kinetics/resize/{{shard}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/kinetics_resize/{{shard}}.tsv"
        conda:
            "../envs/data.yaml"
        threads: 8
        resources:
            mem_mb=lambda wc, threads: 1000 + 500 * threads,
            runtime=lambda wc, attempt: 240 * attempt,
        params:
            settings=as_json(resize_settings()),
            shards=KINETICS["resize"]["shards"],
            psnr_videos=KINETICS["resize"]["psnr_videos"],
            psnr_frames=KINETICS["resize"]["psnr_frames"],
            targets=[split_folder(split) for split in PART_SPLITS],
        shell:
            "python scripts/kinetics.py resize --counts {input:q} --targets {params.targets:q}"
            " --settings {params.settings:q} --shard {wildcards.shard} --shards {params.shards}"
            " --psnr-videos {params.psnr_videos} --psnr-frames {params.psnr_frames}"
            " --workers {threads} --output {output.shard:q} 2> {log:q}"

    rule kinetics_resize_gather:
        input:
            counts=split_counts(),
            shards=expand(
                rules.kinetics_resize.output.shard,
                shard=range(KINETICS["resize"]["shards"]),
            ),
        output:
            report=f"{RESULTS}/kinetics/resize/report.json",
        log:
            f"{RESULTS}/logs/kinetics/resize/gather.log",
        conda:
            "../envs/data.yaml"
        shell:
            "python scripts/kinetics.py resize-gather --counts {input.counts:q}"
            " --report {output.report:q} {input.shards:q} 2> {log:q}"
