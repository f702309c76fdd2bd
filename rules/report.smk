# The Top-1/Top-5 table (md, csv, tex, html), plots and provenance, registered for --report.


localrules:
    report,


rule report:
    input:
        metrics=expand(rules.evaluate.output.metrics, row=ROWS),
        logits=expand(rules.evaluate.output.logits, row=ROWS),
        train_logs=expand(rules.finetune.output.log, run=RUNS),
        labels=rules.splits.output.labels,
    output:
        table_md=f"{RESULTS}/report/table.md",
        table_csv=f"{RESULTS}/report/table.csv",
        table_tex=f"{RESULTS}/report/table.tex",
        table_html=report(
            f"{RESULTS}/report/table.html",
            caption="../report/table.rst",
            category="1. Results",
        ),
        curves=report(
            f"{RESULTS}/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="2. Training",
        ),
        views=report(
            f"{RESULTS}/report/accuracy_vs_views.png",
            caption="../report/accuracy_vs_views.rst",
            category="1. Results",
        ),
        per_class=report(
            f"{RESULTS}/report/per_class.png",
            caption="../report/per_class.rst",
            category="3. Per class",
        ),
        provenance=f"{RESULTS}/report/provenance.json",
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../envs/report.yaml"
    params:
        spec=as_json(report_params()),
        benchmarks=f"{RESULTS}/benchmarks",
        plan=f"{RESULTS}/plan/cost.json",
    shell:
        "python scripts/make_report.py --spec {params.spec:q} --metrics {input.metrics:q}"
        " --logits {input.logits:q} --train-logs {input.train_logs:q} --labels {input.labels:q}"
        " --benchmarks {params.benchmarks:q} --plan {params.plan:q}"
        " --out-dir $(dirname {output.table_md:q}) 2> {log:q}"
