# One rule per kind of step, over every approach of that kind (clsbench.approaches):
# python -m clsbench.cell runs the approach's own entry point.


rule train:
    """Train a cell of an approach with a train step (head, frozen, encoder, instruct): adapter/, the
    per-epoch log and train_info.json (early stopping on validation micro-F1, best epoch restored).
    """
    input:
        model=MODEL_JSON,
        data=dataset_files("labels.json"),
        tuned=tuned_input,
    output:
        adapter=directory(f"{CELL}/adapter"),
        train_log=f"{CELL}/train_log.jsonl",
        info=f"{CELL}/train_info.json",
    log:
        f"{LOG}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
    wildcard_constraints:
        approach=approaches.pattern(stages="train"),
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.batching)
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        **GPU_JOB,
        runtime=720,
    params:
        hparams=hparams_json,
        out_dir=lambda wc, output: Path(output.info).parent,
        rung="",
    shell:
        "python -m clsbench.cell train --approach {wildcards.approach} --model-json {input.model} "
        "--data-dir results/data/{wildcards.dataset} --out-dir {params.out_dir} --rank {wildcards.rank} "
        "--seed {wildcards.seed} --hparams {params.hparams:q} --threads {threads}{params.rung} > {log} 2>&1"


rule fit:
    """A cell of an approach fitted and applied to test and val in one job: TF-IDF + logistic regression
    (seconds, no model), sentence embeddings + logistic regression, SetFit (a model of `models:`).
    """
    input:
        model=fit_model_input,
        data=dataset_files("labels.json"),
        tuned=tuned_input,
    output:
        predictions=f"{CELL}/predictions.parquet",
        train_info=f"{CELL}/train_info.json",
        predict_info=f"{CELL}/predict_info.json",
        val_predictions=f"{CELL}/val/predictions.parquet",
        val_info=f"{CELL}/val/predict_info.json",
        model=f"{CELL}/model.joblib",
    log:
        f"{LOG}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
    wildcard_constraints:
        approach=approaches.pattern(stages="fit"),
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=fit_gpu,
        mem_mb=lambda wc, attempt: 4000 + 12000 * fit_gpu(wc) * attempt,
        runtime=120,
    params:
        hparams=hparams_json,
        model_arg=fit_model_arg,
        out_dir=lambda wc, output: Path(output.model).parent,
    shell:
        "python -m clsbench.cell fit --approach {wildcards.approach} {params.model_arg} "
        "--data-dir results/data/{wildcards.dataset} --out-dir {params.out_dir} --seed {wildcards.seed} "
        "--hparams {params.hparams:q} --threads {threads} > {log} 2>&1"
