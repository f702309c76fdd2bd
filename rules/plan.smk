# `snakemake plan`: what the two fine-tunes and evaluations will cost on these nodes, measured
# on a sample of the user's own splits with the configured launch, workers and augmentation:
# one short job with a fine-tune job's resources (one node). It never starts a fine-tune.


rule plan:
    input:
        train=finetune_split("train"),
        test=rules.splits.output.test,
        data=rules.plan_data.output.json if ARCHIVE else [],
    output:
        json=f"{RESULTS}/plan/cost.json",
        md=f"{RESULTS}/plan/cost.md",
    log:
        f"{RESULTS}/logs/plan.log",
    benchmark:
        f"{RESULTS}/benchmarks/plan.tsv"
    conda:
        "../envs/train.yaml"
    threads: launch_threads("finetune")
    resources:
        gpu=gpus("finetune"),
        nodes=1,
    params:
        spec=as_json(plan_params()),
        device=config["launch"]["finetune"]["device"],
    shell:
        "python scripts/plan.py --spec {params.spec:q} --device {params.device}"
        " --train {input.train:q} --test {input.test:q} --data {input.data:q} --threads {threads}"
        " --out-dir $(dirname {output.json:q}) 2> {log:q}"
