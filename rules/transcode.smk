# Optional short-keyframe H.264 copies of the train/val videos (config data.transcode), made
# once for the fine-tune: a train clip then decodes from a keyframe at most keyint frames back
# instead of ~250. One job per shard (row index modulo shards: known before the splits exist,
# so no checkpoint); each copy is written atomically under <results>/transcode/videos (not a
# declared output, so a failed or stopped shard keeps what it finished and a re-run skips it).
# The gather step writes the fine-tune's CSVs; evaluation keeps reading the originals.
# With the archive's resize on, its one encode makes the short keyframes: this stage is idle.

if TRANSCODE:

    localrules:
        transcode_gather,

    wildcard_constraints:
        shard="[0-9]+",

    rule transcode:
        input:
            train=rules.splits.output.train,
            val=rules.splits.output.val,
        output:
            shard=f"{RESULTS}/transcode/shards/{{shard}}.json",
        log:
            f"{RESULTS}/logs/transcode/{{shard}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/transcode/{{shard}}.tsv"
        conda:
            "../envs/data.yaml"
        threads: 8
        resources:
            mem_mb=lambda wc, threads: 1000 + 500 * threads,
            runtime=lambda wc, attempt: 240 * attempt,
        params:
            shards=lookup(dpath="data/transcode/shards", within=config),
            keyint=lookup(dpath="data/transcode/keyint", within=config),
            crf=lookup(dpath="data/transcode/crf", within=config),
            preset=lookup(dpath="data/transcode/preset", within=config),
            tune=lookup(dpath="data/transcode/tune", within=config),
            psnr_videos=lookup(dpath="data/transcode/psnr_videos", within=config),
            psnr_frames=lookup(dpath="data/transcode/psnr_frames", within=config),
            videos=f"{RESULTS}/transcode/videos",
        shell:
            "python scripts/transcode.py shard --train {input.train:q} --val {input.val:q}"
            " --shard {wildcards.shard} --shards {params.shards} --keyint {params.keyint}"
            " --crf {params.crf} --preset {params.preset} --tune {params.tune}"
            " --psnr-videos {params.psnr_videos} --psnr-frames {params.psnr_frames}"
            " --videos {params.videos:q} --workers {threads} --output {output.shard:q}"
            " 2> {log:q}"

    rule transcode_gather:
        input:
            train=rules.splits.output.train,
            val=rules.splits.output.val,
            shards=expand(
                rules.transcode.output.shard,
                shard=range(config["data"]["transcode"]["shards"]),
            ),
        output:
            train=f"{RESULTS}/transcode/train.csv",
            val=f"{RESULTS}/transcode/val.csv",
            report=f"{RESULTS}/transcode/report.json",
        log:
            f"{RESULTS}/logs/transcode/gather.log",
        conda:
            "../envs/data.yaml"
        shell:
            "python scripts/transcode.py gather --train {input.train:q} --val {input.val:q}"
            " --out-dir $(dirname {output.report:q}) {input.shards:q} 2> {log:q}"
