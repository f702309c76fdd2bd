# The fetched parts -> the split folders (through tarfile's data filter: a hostile part is
# refused before anything is written), each file's size checked on disk; the replacement
# archive over train once every train part is in; then each split's files counted against its
# annotation CSV (present, missing, unexpected). scripts/kinetics.py extract / count,
# k400ft.extract. With kinetics.keep_archives false the parts are temp() outputs of the fetch:
# Snakemake deletes each once its extraction, which checked its files, has succeeded.

if ARCHIVE:

    rule kinetics_extract:
        input:
            unpack(extract_inputs),
        output:
            manifest=f"{RESULTS}/kinetics/extract/{{split}}/part_{{index}}.json",
        log:
            f"{RESULTS}/logs/kinetics/extract/{{split}}_{{index}}.log",
        priority: 10  # before more parts arrive: keep_archives false holds few parts at once
        conda:
            "../envs/data.yaml"
        resources:
            mem_mb=1000,
            runtime=lambda wc, attempt: 60 * attempt,
        params:
            folder=lambda wc: split_folder(
                "train" if wc.split == "replacement" else wc.split, extracted=True
            ),
            flatten=lambda wc: "--flatten" if wc.split == "replacement" else "",
        shell:
            "python scripts/kinetics.py extract --part {input.part:q} --folder {params.folder:q}"
            " {params.flatten} --manifest {output.manifest:q} 2> {log:q}"

    rule kinetics_verify:
        input:
            annotations=lambda wc: kinetics_root(KINETICS["annotations"][wc.split]),
            parts=lambda wc: part_manifests(wc.split),
            replacement=lambda wc: (
                part_manifests("replacement") if wc.split == "train" else []
            ),
        output:
            f"{RESULTS}/kinetics/extract/{{split}}.json",
        log:
            f"{RESULTS}/logs/kinetics/verify_{{split}}.log",
        conda:
            "../envs/data.yaml"
        resources:
            mem_mb=4000,
            runtime=30,
        params:
            folder=lambda wc: split_folder(wc.split, extracted=True),
            extensions=KINETICS["extensions"],
        shell:
            "python scripts/kinetics.py count --split {wildcards.split}"
            " --annotations {input.annotations:q} --folder {params.folder:q}"
            " --extensions {params.extensions:q} --manifests {input.parts:q}"
            " --replacement {input.replacement:q} --output {output:q} 2> {log:q}"
