# Kinetics-400 tree -> train/val/test CSVs (upstream format), labels and the dropped-video report.


rule splits:
    input:
        kinetics_tree,
    output:
        train=f"{RESULTS}/splits/train.csv",
        val=f"{RESULTS}/splits/val.csv",
        test=f"{RESULTS}/splits/test.csv",
        labels=f"{RESULTS}/splits/labels.csv",
        dropped=f"{RESULTS}/splits/dropped.csv",
        summary=f"{RESULTS}/splits/summary.json",
    log:
        f"{RESULTS}/logs/splits.log",
    conda:
        "../envs/data.yaml"
    threads: 8
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        kinetics=as_json({key: KINETICS[key] for key in TREE_KEYS}),
        cache=f"{RESULTS}/cache/probe",
    shell:
        "python scripts/make_splits.py --kinetics {params.kinetics:q} --cache {params.cache:q}"
        " --threads {threads} --out-dir $(dirname {output.train:q}) 2> {log:q}"
