# One fine-tuning job per model: torchrun data parallel, resumable. The resume state lives
# in <results>/state/<model>/ (not a declared output, so a failed or preempted job never
# loses it); the declared outputs appear only when training completes.


rule finetune:
    input:
        train=finetune_split("train"),
        val=finetune_split("val"),
        pretrained=lambda wc: f"{RESULTS}/checkpoints/{config['models'][wc.model]['pretrained']}.pth",
    output:
        weights=f"{RESULTS}/finetune/{{model}}/final.pt",
        log=f"{RESULTS}/finetune/{{model}}/train_log.jsonl",
    log:
        f"{RESULTS}/logs/finetune/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{model}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: launch_threads("finetune")
    resources:
        **launch_resources("finetune"),
    params:
        spec=lambda wc: as_json(finetune_params(wc.model)),
        state=lambda wc: f"{RESULTS}/state/{wc.model}",
        launch=launcher("finetune"),
        device=config["launch"]["finetune"]["device"],
    shell:
        "{params.launch} scripts/finetune.py --spec {params.spec:q} --device {params.device}"
        " --train {input.train:q} --val {input.val:q} --pretrained {input.pretrained:q}"
        " --state-dir {params.state:q} --out-dir $(dirname {output.weights:q}) --threads {threads}"
        " 2> {log:q}"
