# The embedded demo's inputs: a synthetic, learnable Kinetics-shaped video set and tiny
# pretrained checkpoints in the exact upstream key layouts. Active only with demo/config.yaml.

if "demo" in config:

    localrules:
        demo_videos,
        demo_checkpoint,

    rule demo_videos:
        output:
            # the tree's annotation CSVs mark it complete (written last)
            train=f"{config['kinetics']['root']}/{config['kinetics']['annotations']['train']}",
            val=f"{config['kinetics']['root']}/{config['kinetics']['annotations']['val']}",
        log:
            f"{RESULTS}/logs/demo_videos.log",
        conda:
            "../envs/data.yaml"
        params:
            demo=as_json({k: v for k, v in config["demo"].items() if k != "pretrain"}),
            kinetics=as_json(config["kinetics"]),
        shell:
            "python scripts/make_demo.py videos --demo {params.demo:q} --kinetics {params.kinetics:q}"
            " 2> {log:q}"

    rule demo_checkpoint:
        output:
            f"{RESULTS}/pretrained/{{ckpt}}.pth",
        log:
            f"{RESULTS}/logs/demo_checkpoint/{{ckpt}}.log",
        wildcard_constraints:
            ckpt="|".join(demo_checkpoints()) or "NONE",
        conda:
            "../envs/train.yaml"
        params:
            spec=lambda wc: as_json(demo_pretrained(wc.ckpt)),
            # a checkpoint made anew (other pretext settings) is trusted anew: the first-use
            # sha256 record of the one it replaces goes with it
            lock=lambda wc: checkpoint_lock(wc.ckpt),
        shell:
            "python scripts/make_demo.py checkpoint --spec {params.spec:q} --output {output:q}"
            " 2> {log:q} && rm -f {params.lock:q}"
