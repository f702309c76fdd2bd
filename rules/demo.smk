# The embedded demo's inputs: a synthetic, learnable Kinetics-shaped video set, packed as a
# miniature of the public Kinetics-400 archive (which the fetch, extract and resize stages then
# read as they read the real one), and tiny pretrained checkpoints in the exact upstream key
# layouts. Active only with demo/config.yaml.

if "demo" in config:

    DEMO_ARCHIVE = demo_archive_folder()

    localrules:
        demo_archive,
        demo_checkpoint,

    rule demo_archive:
        output:
            # a miniature of the public Kinetics-400 archive, in its layout; the fetch stage
            # reads it from kinetics.archive.base_url (a file: URL of this folder)
            lists=expand(
                f"{DEMO_ARCHIVE}/{{path}}", path=KINETICS["archive"]["lists"].values()
            ),
            annotations=expand(
                f"{DEMO_ARCHIVE}/{{path}}",
                path=KINETICS["archive"]["annotations"].values(),
            ),
            replacement=f"{DEMO_ARCHIVE}/{KINETICS['archive']['replacement']}",
            parts=[
                f"{DEMO_ARCHIVE}/{os.path.dirname(KINETICS['archive']['lists'][split])}/{name}.tar.gz"
                for split in PART_SPLITS
                for name in part_names(split)
            ],
        log:
            f"{RESULTS}/logs/demo_archive.log",
        conda:
            "../envs/data.yaml"
        params:
            demo=as_json({k: v for k, v in config["demo"].items() if k != "pretrain"}),
            # only what the archive's bytes depend on: a change of the resize or fetch
            # settings leaves the archive (and so every fetch and extract) as it is
            kinetics=as_json(
                {
                    **{key: KINETICS[key] for key in TREE_KEYS if key != "root"},
                    "archive": {
                        key: KINETICS["archive"][key]
                        for key in ("lists", "parts", "annotations", "replacement")
                    },
                }
            ),
            folder=lambda wc, output: archive_folder(output.replacement),
        shell:
            "python scripts/make_demo.py archive --demo {params.demo:q}"
            " --kinetics {params.kinetics:q} --folder {params.folder:q} 2> {log:q}"

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
