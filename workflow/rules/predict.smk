rule predict_head:
    """Cache test-set predictions (probabilities + decided labels) of a trained head cell."""
    input:
        adapter="results/{dataset}/{model}/head/r{rank}/s{seed}/adapter",
        data=dataset_files("labels.json"),
    output:
        predictions="results/{dataset}/{model}/head/r{rank}/s{seed}/predictions.parquet",
        info="results/{dataset}/{model}/head/r{rank}/s{seed}/predict_info.json",
    log:
        "results/logs/{dataset}/{model}/head/r{rank}/s{seed}/predict.log",
    benchmark:
        "results/benchmarks/{dataset}/{model}/head/r{rank}/s{seed}/predict.tsv"
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.faults)
    conda:
        "../../envs/clsbench.yaml"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 16000 * attempt,  # host memory: more on each retry
        runtime=120,
    params:
        hparams=lambda wc: as_json(grid.hparams(config, "head", wc.model, wc.dataset)),
        out_dir=lambda wc, output: Path(output.info).parent,
    shell:
        "python -m clsbench.head predict --adapter-dir {input.adapter} --data-dir results/data/{wildcards.dataset} "
        "--out-dir {params.out_dir} --hparams {params.hparams:q} --threads {threads} > {log} 2>&1"


rule predict_classifier:
    """Cache test-set predictions of a frozen-LLM or encoder cell."""
    input:
        adapter=f"{CELL}/adapter",
        data=dataset_files("labels.json"),
    output:
        predictions=f"{CELL}/predictions.parquet",
        info=f"{CELL}/predict_info.json",
    log:
        f"{LOG}/predict.log",
    benchmark:
        f"{BENCH}/predict.tsv"
    wildcard_constraints:
        approach="frozen|encoder",
        rank="0",
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.faults)
    conda:
        "../../envs/clsbench.yaml"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 16000 * attempt,  # host memory: more on each retry
        runtime=120,
    params:
        hparams=hparams_json,
        out_dir=lambda wc, output: Path(output.info).parent,
    shell:
        "python -m clsbench.head predict --adapter-dir {input.adapter} --data-dir results/data/{wildcards.dataset} "
        "--out-dir {params.out_dir} --hparams {params.hparams:q} --threads {threads} > {log} 2>&1"


GENERATIVE_OUTPUTS = {
    "predictions": f"{CELL}/predictions.parquet",
    "info": f"{CELL}/predict_info.json",
    "generated": f"{CELL}/predictions_generate.parquet",
    "generated_info": f"{CELL}/predict_info_generate.json",
}


rule predict_instruct:
    """Both inference modes of an instruct cell in one job (the model loads once): label scoring
    (predictions.parquet, with probabilities) and free generation + parsing (predictions_generate.parquet).
    """
    input:
        adapter=f"{CELL}/adapter",
        data=dataset_files("labels.json"),
    output:
        **GENERATIVE_OUTPUTS,
    log:
        f"{LOG}/predict.log",
    benchmark:
        f"{BENCH}/predict.tsv"
    wildcard_constraints:
        approach="instruct",
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.faults)
    conda:
        "../../envs/clsbench.yaml"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 16000 * attempt,  # host memory: more on each retry
        runtime=240,
    params:
        hparams=hparams_json,
        out_dir=lambda wc, output: Path(output.info).parent,
    shell:
        "python -m clsbench.instruct predict --source {input.adapter} --data-dir results/data/{wildcards.dataset} "
        "--out-dir {params.out_dir} --hparams {params.hparams:q} --threads {threads} > {log} 2>&1"


rule predict_zeroshot:
    """The instruct prompts and both inference modes on the untrained model (no training step)."""
    input:
        model="results/models/{model}/model.json",
        data=dataset_files("labels.json"),
    output:
        **GENERATIVE_OUTPUTS,
        train_info=f"{CELL}/train_info.json",
    log:
        f"{LOG}/predict.log",
    benchmark:
        f"{BENCH}/predict.tsv"
    wildcard_constraints:
        approach="zeroshot",
        rank="0",
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.faults)
    conda:
        "../../envs/clsbench.yaml"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 16000 * attempt,  # host memory: more on each retry
        runtime=240,
    params:
        hparams=hparams_json,
        out_dir=lambda wc, output: Path(output.info).parent,
    shell:
        "python -m clsbench.instruct predict --approach zeroshot --source {input.model} "
        "--data-dir results/data/{wildcards.dataset} --out-dir {params.out_dir} --hparams {params.hparams:q} "
        "--threads {threads} > {log} 2>&1"
