rule evaluate:
    """metrics.json of one cell, computed from its cached predictions only."""
    input:
        predictions=CELL + "/predictions.parquet",
        labels="results/data/{dataset}/labels.json",
        train_info=CELL + "/train_info.json",
        predict_info=CELL + "/predict_info.json",
    output:
        CELL + "/metrics.json",
    log:
        LOG + "/evaluate.log",
    benchmark:
        BENCH + "/evaluate.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/clsbench.yaml"
    shell:
        "python -m clsbench.metrics --predictions {input.predictions} --labels {input.labels} "
        "--extra {input.train_info} {input.predict_info} --out {output} > {log} 2>&1"
