# Pretrained (and released) checkpoints: gdown by Drive id, or a file already on disk; both
# verified (pinned sha256, or trust on first use recorded beside the file) and loaded once
# as a checkpoint of the expected layout before they appear at the output path.


localrules:
    checkpoint,


rule checkpoint:
    input:
        checkpoint_source,
    output:
        pth=f"{RESULTS}/checkpoints/{{ckpt}}.pth",
    log:
        f"{RESULTS}/logs/checkpoint/{{ckpt}}.log",
    retries: 2
    conda:
        "../envs/download.yaml"
    params:
        spec=lambda wc: as_json(config["checkpoints"][wc.ckpt]),
        lock=lambda wc: checkpoint_lock(wc.ckpt),
    shell:
        "python scripts/download_checkpoint.py --name {wildcards.ckpt} --spec {params.spec:q}"
        " --lock {params.lock:q} --output {output.pth:q} 2> {log:q}"
