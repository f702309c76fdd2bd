# One fine-tuning job per run (a model and a seed, RUNS): torchrun data parallel, resumable.
# The resume state lives in <results>/state/<run>/ (not a declared output, so a failed or
# preempted job never loses it); the declared outputs appear only when training completes.


rule finetune:
    input:
        train=finetune_split("train"),
        val=finetune_split("val"),
        pretrained=lambda wc: f"{RESULTS}/checkpoints/{row_spec(wc.run)['pretrained']}.pth",
    output:
        weights=f"{RESULTS}/finetune/{{run}}/final.pt",
        log=f"{RESULTS}/finetune/{{run}}/train_log.jsonl",
    log:
        f"{RESULTS}/logs/finetune/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{run}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: launch_threads("finetune")
    resources:
        **launch_resources("finetune"),
    params:
        spec=lambda wc: as_json(finetune_params(wc.run)),
        state=lambda wc: f"{RESULTS}/state/{wc.run}",
        launch=launcher("finetune"),
        device=config["launch"]["finetune"]["device"],
    shell:
        "{params.launch} scripts/finetune.py --spec {params.spec:q} --device {params.device}"
        " --train {input.train:q} --val {input.val:q} --pretrained {input.pretrained:q}"
        " --state-dir {params.state:q} --out-dir $(dirname {output.weights:q}) --threads {threads}"
        " 2> {log:q}"
