rule evaluate:
    """metrics.json of one cell, computed from its cached predictions only."""
    input:
        predictions=f"{CELL}/predictions.parquet",
        labels=f"{DATA}/labels.json",
        train_info=f"{CELL}/train_info.json",
        predict_info=f"{CELL}/predict_info.json",
    output:
        f"{CELL}/metrics.json",
    log:
        f"{LOG}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m clsbench.metrics --predictions {input.predictions} --labels {input.labels} "
        "--extra {input.train_info} {input.predict_info} --out {output} > {log} 2>&1"


rule evaluate_generate:
    """metrics_generate.json: the generate mode of a prompting cell (adds the invalid-output rate)."""
    input:
        predictions=f"{CELL}/{layout.mode_file('predictions', 'generate', 'parquet')}",
        labels=f"{DATA}/labels.json",
        train_info=f"{CELL}/train_info.json",
        predict_info=f"{CELL}/{layout.mode_file('predict_info', 'generate')}",
    output:
        f"{CELL}/{layout.mode_file('metrics', 'generate')}",
    log:
        f"{LOG}/evaluate_generate.log",
    benchmark:
        f"{BENCH}/evaluate_generate.tsv"
    wildcard_constraints:
        approach=approaches.pattern(generative=True),
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m clsbench.metrics --predictions {input.predictions} --labels {input.labels} "
        "--extra {input.train_info} {input.predict_info} --out {output} > {log} 2>&1"


rule evaluate_val:
    """val/metrics.json of one cell: its validation predictions scored like its test predictions."""
    input:
        predictions=f"{CELL}/val/predictions.parquet",
        labels=f"{DATA}/labels.json",
        predict_info=f"{CELL}/val/predict_info.json",
    output:
        f"{CELL}/val/metrics.json",
    log:
        f"{LOG}/evaluate_val.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m clsbench.metrics --predictions {input.predictions} --labels {input.labels} "
        "--extra {input.predict_info} --out {output} > {log} 2>&1"
