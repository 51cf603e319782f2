# Each predict job caches the test and the validation predictions of its cell with one model load
# (validation: the approach's first mode only; what results/<dataset>/best.json is chosen on).
VAL_OUTPUTS = {
    "val_predictions": f"{CELL}/val/predictions.parquet",
    "val_info": f"{CELL}/val/predict_info.json",
}


rule predict:
    """Cache the test and validation predictions (probabilities + decided labels) of a trained
    classifier cell."""
    input:
        source=f"{CELL}/adapter",
        data=dataset_files("labels.json"),
        tuned=tuned_input,
    output:
        **VAL_OUTPUTS,
        predictions=f"{CELL}/predictions.parquet",
        info=f"{CELL}/predict_info.json",
    log:
        f"{LOG}/predict.log",
    benchmark:
        f"{BENCH}/predict.tsv"
    wildcard_constraints:
        approach=approaches.pattern(stages="train", modes=approaches.CLASSIFIER_MODES),
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.batching)
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
        "--hparams {params.hparams:q} --threads {threads} --splits test val > {log} 2>&1"


# Both inference modes of a prompting cell in one job (the model loads once, as for the validation split): label scoring
# (predictions.parquet, with probabilities) and free generation + parsing (predictions_generate.parquet).
PROMPTED_OUTPUTS = {
    "predictions": f"{CELL}/predictions.parquet",
    "info": f"{CELL}/predict_info.json",
    "generated": f"{CELL}/{layout.mode_file('predictions', 'generate', 'parquet')}",
    "generated_info": f"{CELL}/{layout.mode_file('predict_info', 'generate')}",
    **VAL_OUTPUTS,
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
        source=MODEL_JSON,
        data=dataset_files("labels.json"),
    output:
        **PROMPTED_OUTPUTS,
        train_info=f"{CELL}/train_info.json",  # what the evaluation reads of a cell without a train step
    wildcard_constraints:
        approach=approaches.pattern(stages="predict", modes=approaches.PROMPT_MODES),
    resources:
        **GPU_JOB,
        runtime=240,
