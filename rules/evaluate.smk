# 5 x 3 view evaluation of one model (a fine-tune of ours, or released fine-tuned weights):
# per-view logits and metrics. Changing evaluation settings re-runs only this and the table.


rule evaluate:
    input:
        test=rules.splits.output.test,
        weights=eval_weights,
    output:
        logits=f"{RESULTS}/evaluate/{{row}}/logits.npz",
        metrics=f"{RESULTS}/evaluate/{{row}}/metrics.json",
    log:
        f"{RESULTS}/logs/evaluate/{{row}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{row}}.tsv"
    conda:
        "../envs/train.yaml"
    threads: launch_threads("evaluate")
    resources:
        **launch_resources("evaluate"),
    params:
        spec=lambda wc: as_json(eval_params(wc.row)),
        launch=launcher("evaluate"),
        device=config["launch"]["evaluate"]["device"],
    shell:
        "{params.launch} scripts/evaluate.py --spec {params.spec:q} --device {params.device}"
        " --test {input.test:q} --weights {input.weights:q} --out-dir $(dirname {output.metrics:q})"
        " --threads {threads} 2> {log:q}"
