rule prepare_model:
    """Make one model loadable offline: de-quantise packaged GGUF, build from config, or fetch from the hub."""
    output:
        MODEL_JSON,
    log:
        "results/logs/models/{model}.log",
    benchmark:
        "results/benchmarks/models/{model}.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        spec=model_spec_json,
    shell:
        "python -m clsbench.models --key {wildcards.model} --spec {params.spec:q} "
        "--out results/models/{wildcards.model} > {log} 2>&1"
