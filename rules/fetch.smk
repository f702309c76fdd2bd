# The public Kinetics-400 archive (kinetics.source: archive): its list files and annotation
# CSVs, then one job per part, each resumed, retried and read to its end as a tar.gz before it
# counts (scripts/kinetics.py fetch, k400ft.fetch). Before any part: the data plan (bytes to
# fetch, peak disk, resize core-hours), which refuses when kinetics.root's file system cannot
# hold the peak. Parts run at most kinetics.archive.connections at a time (the resource
# kinetics_connections; --resources kinetics_connections=N on the command line wins).
# A part that cannot be had fails its job naming the URL; with --keep-going the others go on
# and the run ends with the list of what is missing (onerror below).

if ARCHIVE:

    workflow.global_resources.setdefault(
        "kinetics_connections", KINETICS["archive"]["connections"]
    )

    localrules:
        kinetics_list,
        kinetics_annotations,
        plan_data,

    wildcard_constraints:
        split="|".join([*PART_SPLITS, "replacement"]),
        index="[0-9]+",

    rule kinetics_list:
        input:
            archive_made,
        output:
            f"{ARCHIVES}/{{split}}/parts.txt",
        log:
            f"{RESULTS}/logs/kinetics/list_{{split}}.log",
        conda:
            "../envs/data.yaml"
        params:
            url=lambda wc: archive_url(KINETICS["archive"]["lists"][wc.split]),
        shell:
            "python scripts/kinetics.py fetch --url {params.url:q} --output {output:q} 2> {log:q}"

    rule kinetics_annotations:
        input:
            archive_made,
        output:
            **{
                split: kinetics_root(KINETICS["annotations"][split])
                for split in PART_SPLITS
            },
        log:
            f"{RESULTS}/logs/kinetics/annotations.log",
        conda:
            "../envs/data.yaml"
        params:
            urls=[
                archive_url(KINETICS["archive"]["annotations"][s]) for s in PART_SPLITS
            ],
        shell:
            "python scripts/kinetics.py fetch --url {params.urls:q} --output {output:q} 2> {log:q}"

    rule plan_data:
        input:
            lists=expand(rules.kinetics_list.output[0], split=PART_SPLITS),
            annotations=rules.kinetics_annotations.output,
        output:
            json=f"{RESULTS}/plan/data.json",
            md=f"{RESULTS}/plan/data.md",
        log:
            f"{RESULTS}/logs/plan_data.log",
        conda:
            "../envs/data.yaml"
        params:
            spec=as_json(plan_data_spec()),
            splits=PART_SPLITS,
        shell:
            "python scripts/kinetics.py plan --spec {params.spec:q} --splits {params.splits:q}"
            " --lists {input.lists:q} --annotations {input.annotations:q}"
            " --json {output.json:q} --md {output.md:q} 2> {log:q}"

    rule kinetics_fetch:
        input:
            unpack(fetch_inputs),
        output:
            part=(
                f"{ARCHIVES}/{{split}}/part_{{index}}.tar.gz"
                if KINETICS["keep_archives"]
                else temp(f"{ARCHIVES}/{{split}}/part_{{index}}.tar.gz")
            ),
        log:
            f"{RESULTS}/logs/kinetics/fetch/{{split}}_{{index}}.log",
        conda:
            "../envs/data.yaml"
        resources:
            kinetics_connections=1,
            mem_mb=1000,
            runtime=lambda wc, attempt: 120 * attempt,
        params:
            source=fetch_source,
            failure=f"{FETCH_FAILED}/{{split}}/part_{{index}}.json",
        shell:
            "python scripts/kinetics.py fetch {params.source} --tar --output {output.part:q}"
            " --failure {params.failure:q} 2> {log:q}"

    onerror:
        # the parts that are missing, and why (with --keep-going, the others are all in)
        subprocess.run(
            [
                "python",
                "scripts/kinetics.py",
                "missing",
                "--spec",
                as_json(missing_spec()),
            ],
            check=False,
        )
