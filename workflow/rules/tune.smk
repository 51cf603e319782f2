# Equal-effort tuning (clsbench.tuning): each trial of a configuration is a cell of its own under
# results/<dataset>/<model>/<approach>/r<rank>/tune/t<trial>/s<seed>, trained with the trial's
# hyperparameters and scored on validation only (after tune.rung_epochs epochs where set); the tune
# checkpoint writes tuned.json, with which the configuration's cells (every seed) are then trained.


use rule train as train_trial with:
    input:
        model=MODEL_JSON,
        data=dataset_files("labels.json"),
    output:
        adapter=directory(f"{TRIAL}/adapter"),
        train_log=f"{TRIAL}/train_log.jsonl",
        info=f"{TRIAL}/train_info.json",
    log:
        f"{TRIAL_LOG}/train.log",
    benchmark:
        f"{TRIAL_BENCH}/train.tsv"
    params:
        hparams=trial_hparams_json,
        out_dir=lambda wc, output: Path(output.info).parent,
        rung=rung_arg,


use rule fit as fit_trial with:
    input:
        model=fit_model_input,
        data=dataset_files("labels.json"),
    output:
        predictions=f"{TRIAL}/predictions.parquet",
        train_info=f"{TRIAL}/train_info.json",
        predict_info=f"{TRIAL}/predict_info.json",
        val_predictions=f"{TRIAL}/val/predictions.parquet",
        val_info=f"{TRIAL}/val/predict_info.json",
        model=f"{TRIAL}/model.joblib",
    log:
        f"{TRIAL_LOG}/train.log",
    benchmark:
        f"{TRIAL_BENCH}/train.tsv"
    params:
        hparams=trial_hparams_json,
        out_dir=lambda wc, output: Path(output.model).parent,


rule predict_trial:
    """A trained trial's validation predictions (the approach's first mode)."""
    input:
        source=f"{TRIAL}/adapter",
        data=dataset_files("labels.json"),
    output:
        predictions=f"{TRIAL}/val/predictions.parquet",
        info=f"{TRIAL}/val/predict_info.json",
    log:
        f"{TRIAL_LOG}/predict.log",
    benchmark:
        f"{TRIAL_BENCH}/predict.tsv"
    wildcard_constraints:
        approach=approaches.pattern(stages="train"),
    retries: 2
    conda:
        CONDA_ENV
    threads: config["threads"]
    resources:
        **GPU_JOB,
        runtime=120,
    params:
        hparams=trial_hparams_json,
        out_dir=lambda wc, output: Path(output.info).parents[1],
    shell:
        "python -m clsbench.cell predict --approach {wildcards.approach} --source {input.source} "
        "--data-dir results/data/{wildcards.dataset} --out-dir {params.out_dir} --seed {wildcards.seed} "
        "--hparams {params.hparams:q} --threads {threads} --splits val > {log} 2>&1"


use rule evaluate_val as evaluate_trial with:
    input:
        predictions=f"{TRIAL}/val/predictions.parquet",
        labels=f"{DATA}/labels.json",
        predict_info=f"{TRIAL}/val/predict_info.json",
    output:
        f"{TRIAL}/val/metrics.json",
    log:
        f"{TRIAL_LOG}/evaluate_val.log",


checkpoint tune:
    """tuned.json: the trial with the best validation metric (clsbench.tuning)."""
    input:
        metrics=lambda wc: [f"{d}/val/metrics.json" for d in trial_dirs(wc)],
        infos=lambda wc: [f"{d}/train_info.json" for d in trial_dirs(wc)],
        labels=f"{DATA}/labels.json",
    output:
        f"{CONFIGURATION}/{tuning.TUNED_FILE}",
    log:
        "results/logs/{dataset}/{model}/{approach}/r{rank}/tune/tune.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        trials=lambda wc: as_json(trial_overrides(wc)),
        metric=lambda wc: tuning.settings(config, wc.approach)["metric"],
        dirs=trial_dirs,
    shell:
        "python -m clsbench.tuning --trials {params.trials:q} --metric {params.metric} --labels {input.labels} "
        "--out {output} -- {params.dirs} > {log} 2>&1"
