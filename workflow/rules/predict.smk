rule predict:
    """Cache the test-set predictions (probabilities + decided labels) of a trained classifier cell."""
    input:
        source=f"{CELL}/adapter",
        data=dataset_files("labels.json"),
    output:
        predictions=f"{CELL}/predictions.parquet",
        info=f"{CELL}/predict_info.json",
    log:
        f"{LOG}/predict.log",
    benchmark:
        f"{BENCH}/predict.tsv"
    wildcard_constraints:
        approach=approaches.pattern(stages="train", modes=approaches.CLASSIFIER_MODES),
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.faults)
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        **GPU_JOB,
        runtime=120,
    params:
        hparams=hparams_json,
        out_dir=lambda wc, output: Path(output.info).parent,
    shell:
        "python -m clsbench.cell predict --approach {wildcards.approach} --source {input.source} "
        "--data-dir results/data/{wildcards.dataset} --out-dir {params.out_dir} --seed {wildcards.seed} "
        "--hparams {params.hparams:q} --threads {threads} > {log} 2>&1"


# Both inference modes of a prompting cell in one job (the model loads once): label scoring
# (predictions.parquet, with probabilities) and free generation + parsing (predictions_generate.parquet).
PROMPTED_OUTPUTS = {
    "predictions": f"{CELL}/predictions.parquet",
    "info": f"{CELL}/predict_info.json",
    "generated": f"{CELL}/predictions_generate.parquet",
    "generated_info": f"{CELL}/predict_info_generate.json",
}


use rule predict as predict_prompted with:
    output:
        **PROMPTED_OUTPUTS,
    wildcard_constraints:
        approach=approaches.pattern(stages="train", modes=approaches.PROMPT_MODES),
    resources:
        **GPU_JOB,
        runtime=240,


use rule predict as predict_untrained with:
    input:
        source="results/models/{model}/model.json",
        data=dataset_files("labels.json"),
    output:
        **PROMPTED_OUTPUTS,
        train_info=f"{CELL}/train_info.json",  # what the evaluation reads of a cell without a train step
    wildcard_constraints:
        approach=approaches.pattern(stages="predict", modes=approaches.PROMPT_MODES),
    resources:
        **GPU_JOB,
        runtime=240,


rule predict_val:
    """Validation-split predictions of any cell, by its own predict step (prompting cells: their
    first mode, score): what results/<dataset>/best.json is chosen on."""
    input:
        source=cell_source,
        data=dataset_files("labels.json"),
    output:
        predictions=f"{CELL}/val/predictions.parquet",
        info=f"{CELL}/val/predict_info.json",
    log:
        f"{LOG}/predict_val.log",
    benchmark:
        f"{BENCH}/predict_val.tsv"
    retries: 2
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        gpu=lambda wc: int(approaches.get(wc.approach).stages != "fit"),
        mem_mb=GPU_JOB["mem_mb"],
        runtime=60,
    params:
        hparams=hparams_json,
        out_dir=lambda wc, output: Path(output.info).parent,
        source=lambda wc, input: (
            Path(input.source).parent
            if input.source.endswith(".joblib")
            else input.source
        ),
        mode=lambda wc: approaches.get(wc.approach).modes[0],
    shell:
        "python -m clsbench.cell predict --approach {wildcards.approach} --source {params.source} "
        "--data-dir results/data/{wildcards.dataset} --out-dir {params.out_dir} --seed {wildcards.seed} "
        "--hparams {params.hparams:q} --threads {threads} --split val --modes {params.mode} > {log} 2>&1"
