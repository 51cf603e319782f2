rule train_head:
    """Approach "head": QLoRA adapters + classification head on the last token (early stopping on val micro-F1)."""
    input:
        model="results/models/{model}/model.json",
        data=dataset_files("labels.json"),
    output:
        adapter=directory("results/{dataset}/{model}/head/r{rank}/s{seed}/adapter"),
        train_log="results/{dataset}/{model}/head/r{rank}/s{seed}/train_log.jsonl",
        info="results/{dataset}/{model}/head/r{rank}/s{seed}/train_info.json",
    params:
        hparams=lambda wc: as_json(grid.hparams(config, "head", wc.model)),
        out_dir=lambda wc, output: Path(output.info).parent,
    log:
        "results/logs/{dataset}/{model}/head/r{rank}/s{seed}/train.log",
    benchmark:
        "results/benchmarks/{dataset}/{model}/head/r{rank}/s{seed}/train.tsv"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    conda:
        "../../envs/clsbench.yaml"
    shell:
        "python -m clsbench.head train --model-json {input.model} --data-dir results/data/{wildcards.dataset} "
        "--out-dir {params.out_dir} --rank {wildcards.rank} --seed {wildcards.seed} "
        "--hparams {params.hparams:q} --threads {threads} > {log} 2>&1"
