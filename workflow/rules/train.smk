rule train_head:
    """Approach "head": QLoRA adapters + classification head on the last token (early stopping on val micro-F1)."""
    input:
        model="results/models/{model}/model.json",
        data=dataset_files("labels.json"),
    output:
        adapter=directory("results/{dataset}/{model}/head/r{rank}/s{seed}/adapter"),
        train_log="results/{dataset}/{model}/head/r{rank}/s{seed}/train_log.jsonl",
        info="results/{dataset}/{model}/head/r{rank}/s{seed}/train_info.json",
    log:
        "results/logs/{dataset}/{model}/head/r{rank}/s{seed}/train.log",
    benchmark:
        "results/benchmarks/{dataset}/{model}/head/r{rank}/s{seed}/train.tsv"
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.faults)
    conda:
        "../../envs/clsbench.yaml"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 16000 * attempt,  # host memory: more on each retry
        runtime=720,
    params:
        hparams=lambda wc: as_json(grid.hparams(config, "head", wc.model, wc.dataset)),
        out_dir=lambda wc, output: Path(output.info).parent,
    shell:
        "python -m clsbench.head train --model-json {input.model} --data-dir results/data/{wildcards.dataset} "
        "--out-dir {params.out_dir} --rank {wildcards.rank} --seed {wildcards.seed} "
        "--hparams {params.hparams:q} --threads {threads} > {log} 2>&1"


rule train_classifier:
    """Approaches "frozen" (head on the frozen 4-bit LLM, no LoRA) and "encoder" (full fine-tuning)."""
    input:
        model="results/models/{model}/model.json",
        data=dataset_files("labels.json"),
    output:
        adapter=directory(f"{CELL}/adapter"),
        train_log=f"{CELL}/train_log.jsonl",
        info=f"{CELL}/train_info.json",
    log:
        f"{LOG}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
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
        runtime=720,
    params:
        hparams=hparams_json,
        out_dir=lambda wc, output: Path(output.info).parent,
    shell:
        "python -m clsbench.head train --approach {wildcards.approach} --model-json {input.model} "
        "--data-dir results/data/{wildcards.dataset} --out-dir {params.out_dir} --rank 0 --seed {wildcards.seed} "
        "--hparams {params.hparams:q} --threads {threads} > {log} 2>&1"


rule tfidf:
    """Approach "tfidf": TF-IDF + logistic regression, fitted and applied in one CPU job (seconds)."""
    input:
        data=dataset_files("labels.json"),
    output:
        predictions="results/{dataset}/tfidf/tfidf/r0/s{seed}/predictions.parquet",
        train_info="results/{dataset}/tfidf/tfidf/r0/s{seed}/train_info.json",
        predict_info="results/{dataset}/tfidf/tfidf/r0/s{seed}/predict_info.json",
        model="results/{dataset}/tfidf/tfidf/r0/s{seed}/model.joblib",
    log:
        "results/logs/{dataset}/tfidf/tfidf/r0/s{seed}/train.log",
    benchmark:
        "results/benchmarks/{dataset}/tfidf/tfidf/r0/s{seed}/train.tsv"
    conda:
        "../../envs/clsbench.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        hparams=lambda wc: as_json(grid.hparams(config, "tfidf", "tfidf", wc.dataset)),
        out_dir=lambda wc, output: Path(output.model).parent,
    shell:
        "python -m clsbench.tfidf --data-dir results/data/{wildcards.dataset} --out-dir {params.out_dir} "
        "--seed {wildcards.seed} --hparams {params.hparams:q} > {log} 2>&1"


rule train_instruct:
    """Approach "instruct": QLoRA instruction tuning on the Appendix B prompts (TRL SFTTrainer, answer-only loss)."""
    input:
        model="results/models/{model}/model.json",
        data=dataset_files("labels.json"),
    output:
        adapter=directory("results/{dataset}/{model}/instruct/r{rank}/s{seed}/adapter"),
        train_log="results/{dataset}/{model}/instruct/r{rank}/s{seed}/train_log.jsonl",
        info="results/{dataset}/{model}/instruct/r{rank}/s{seed}/train_info.json",
    log:
        "results/logs/{dataset}/{model}/instruct/r{rank}/s{seed}/train.log",
    benchmark:
        "results/benchmarks/{dataset}/{model}/instruct/r{rank}/s{seed}/train.tsv"
    retries: 2  # an out-of-memory failure records halved batch sizes for the retry (clsbench.faults)
    conda:
        "../../envs/clsbench.yaml"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=lambda wc, attempt: 16000 * attempt,  # host memory: more on each retry
        runtime=720,
    params:
        hparams=lambda wc: as_json(
            grid.hparams(config, "instruct", wc.model, wc.dataset)
        ),
        out_dir=lambda wc, output: Path(output.info).parent,
    shell:
        "python -m clsbench.instruct train --model-json {input.model} --data-dir results/data/{wildcards.dataset} "
        "--out-dir {params.out_dir} --rank {wildcards.rank} --seed {wildcards.seed} "
        "--hparams {params.hparams:q} --threads {threads} > {log} 2>&1"
