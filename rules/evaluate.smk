# 5 x 3 view evaluation of one model (a fine-tune of ours, or released fine-tuned weights):
# per-view logits and metrics. Changing evaluation settings re-runs only this and the table.


def eval_weights(wildcards):
    if wildcards.row in config["models"]:
        return rules.finetune.output.weights.format(model=wildcards.row)
    return f"{RESULTS}/checkpoints/{config['released'][wildcards.row]['checkpoint']}.pth"


def eval_params(row):
    spec = row_spec(row)
    return {
        "arch": spec["arch"],
        "data": config["data"],
        "evaluate": config["evaluate"],
        "num_classes": config["kinetics"]["num_classes"],
        "weights_format": "ours" if row in config["models"] else
        config["checkpoints"][spec["checkpoint"]]["format"],
    }


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
    params:
        spec=lambda wc: as_json(eval_params(wc.row)),
        launch=launcher("evaluate"),
        device=config["launch"]["evaluate"]["device"],
    threads: 2
    resources:
        gpu=gpus("evaluate"),
        nodes=config["launch"]["evaluate"]["nodes"],
    shell:
        "{params.launch} scripts/evaluate.py --spec {params.spec:q} --device {params.device}"
        " --test {input.test:q} --weights {input.weights:q} --out-dir $(dirname {output.metrics:q})"
        " 2> {log:q}"
