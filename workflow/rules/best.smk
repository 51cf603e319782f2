# The best cell of each dataset, chosen on validation micro-F1, and user files labelled with it.


rule best:
    """results/<dataset>/best.json: the cell to use, chosen on validation (clsbench.best)."""
    input:
        val=lambda wc: [f"{c.path}/val/metrics.json" for c in dataset_cells(wc)],
        test=lambda wc: [f"{c.path}/metrics.json" for c in dataset_cells(wc)],
    output:
        "results/{dataset}/best.json",
    log:
        "results/logs/{dataset}/best.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cells=lambda wc: [c.path for c in dataset_cells(wc)],
        hparams=lambda wc: as_json(
            {
                c.path: grid.for_rank(
                    grid.hparams(config, c.approach, c.model, c.dataset), c.rank
                )
                for c in dataset_cells(wc)
            }
        ),
        dataset_settings=lambda wc: as_json(
            {
                k: config["datasets"][wc.dataset].get(k)
                for k in ("text_columns", "max_words")
            }
        ),
    shell:
        "python -m clsbench.best --cells {params.cells} --hparams {params.hparams:q} "
        "--dataset-settings {params.dataset_settings:q} --out {output} > {log} 2>&1"


rule apply_best:
    """results/<dataset>/apply/<name>.csv: the file `datasets.<dataset>.apply.<name>` of the config
    labelled by the dataset's best cell (clsbench.apply)."""
    input:
        best="results/{dataset}/best.json",
        texts=lambda wc: config["datasets"][wc.dataset]["apply"][wc.name],
    output:
        "results/{dataset}/apply/{name}.csv",
    log:
        "results/logs/{dataset}/apply/{name}.log",
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        **GPU_JOB,
        runtime=120,
    shell:
        "python -m clsbench.apply --best {input.best} --input {input.texts} --output {output} --force "
        "--threads {threads} > {log} 2>&1"
