rule prepare_dataset:
    """Load, de-duplicate, split and cap one dataset."""
    input:
        dataset_source_inputs,
    output:
        splits=expand(
            "results/data/{{dataset}}/{split}.parquet", split=["train", "val", "test"]
        ),
        labels=f"{DATA}/labels.json",
        stats=report(
            f"{DATA}/stats.json",
            category="Datasets",
            caption="../report/dataset_stats.rst",
        ),
    log:
        "results/logs/data/{dataset}.log",
    benchmark:
        "results/benchmarks/data/{dataset}.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=dataset_spec_json,
        source_version=dataset_source_version,
        base_arg=lambda wc, input: (
            f"--base-dir {Path(input[0]).parent}"
            if config["datasets"][wc.dataset].get("base")
            else ""
        ),
    shell:
        "python -m clsbench.data --key {wildcards.dataset} --spec {params.spec:q} "
        "--out results/data/{wildcards.dataset} {params.base_arg} > {log} 2>&1"
