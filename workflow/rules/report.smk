TABLES = [
    "f1",
    "throughput",
    "dataset_stats",
    "calibration",
    "paired_tests",
    "per_label",
]


rule tables:
    """The paper's tables (F1, throughput, dataset statistics) and calibration, as CSV, Markdown and LaTeX."""
    input:
        metrics=all_metrics(),
        stats=expand(f"{DATA}/stats.json", dataset=grid_datasets()),
        predictions=[f"{cell.path}/predictions.parquet" for cell in CELLS],
        models=expand(MODEL_JSON, model=grid_models()),
        train_texts=expand(
            "results/data/{dataset}/train.parquet", dataset=grid_datasets()
        ),
        labels=expand(f"{DATA}/labels.json", dataset=grid_datasets()),
        tuned=tuned_files(),
    output:
        csv=report(
            expand("reports/tables/{table}.csv", table=TABLES),
            category="Tables",
            caption="../report/tables.rst",
        ),
        md=expand("reports/tables/{table}.md", table=TABLES),
        tex=expand("reports/tables/{table}.tex", table=TABLES),
    log:
        "results/logs/report/tables.log",
    benchmark:
        "results/benchmarks/report/tables.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        paper=paper_dataset_args(),
        tokenizers=lambda wc, input: " ".join(
            f"{Path(m).parent.name}={m}" for m in input.models
        ),
    shell:
        "python -m clsbench.tables --out-dir reports/tables --stats {input.stats} {params.paper} "
        "--tokenizers {params.tokenizers} "
        "-- {input.metrics} > {log} 2>&1"


rule claims:
    """The paper's claims tested on the cached predictions: Δ with 95% interval, p-value and verdict per claim."""
    input:
        metrics=all_metrics(),
        predictions=[f"{cell.path}/predictions.parquet" for cell in CELLS],
        labels=expand(f"{DATA}/labels.json", dataset=grid_datasets()),
    output:
        csv=report(
            "reports/tables/claims.csv",
            category="Claims",
            caption="../report/claims.rst",
        ),
        md="reports/tables/claims.md",
        tex="reports/tables/claims.tex",
    log:
        "results/logs/report/claims.log",
    benchmark:
        "results/benchmarks/report/claims.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        exclude=(
            " ".join(["--exclude-models", *grid.variants(config)])
            if grid.variants(config)
            else ""
        ),
    shell:
        "python -m clsbench.claims --out-dir reports/tables {params.exclude} -- {input.metrics} > {log} 2>&1"


rule figures:
    """Bubble plots, F1 bars, reliability diagrams and training curves from the cells' cached outputs."""
    input:
        metrics=all_metrics(),
        labels=expand(f"{DATA}/labels.json", dataset=grid_datasets()),
        predictions=[f"{cell.path}/predictions.parquet" for cell in CELLS],
        train_logs=train_logs(),
    output:
        bars=report(
            "reports/figures/f1_bars.png",
            category="Figures",
            caption="../report/f1_bars.rst",
        ),
        bubbles=report(
            expand("reports/figures/bubble_{dataset}.png", dataset=grid_datasets()),
            category="Figures",
            caption="../report/bubble.rst",
        ),
        reliability=report(
            expand(
                "reports/figures/reliability_{dataset}.png", dataset=grid_datasets()
            ),
            category="Calibration",
            caption="../report/reliability.rst",
        ),
        training=report(
            expand("reports/figures/training_{dataset}.png", dataset=grid_datasets()),
            category="Training curves",
            caption="../report/training.rst",
        ),
        pdfs=expand(
            "reports/figures/{name}.pdf",
            name=["f1_bars"]
            + [
                f"{kind}_{d}"
                for kind in ("bubble", "reliability", "training")
                for d in grid_datasets()
            ],
        ),
    log:
        "results/logs/report/figures.log",
    benchmark:
        "results/benchmarks/report/figures.tsv"
    conda:
        CONDA_ENV
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m clsbench.plots --out reports/figures {input.metrics} > {log} 2>&1"


rule decision:
    """The decision card of each dataset: the recommendation (best.json), its certainty on test
    (seed-aware bootstrap), the runner-up, costs and flags (clsbench.decision)."""
    input:
        best=expand("results/{dataset}/best.json", dataset=grid_datasets()),
        metrics=all_metrics(),
        predictions=[f"{cell.path}/predictions.parquet" for cell in CELLS],
        labels=expand(f"{DATA}/labels.json", dataset=grid_datasets()),
    output:
        md=report(
            "reports/tables/decision.md",
            category="1. Decision",
            caption="../report/decision.rst",
        ),
        csv="reports/tables/decision.csv",
        figures=report(
            expand("reports/figures/decision_{dataset}.png", dataset=grid_datasets()),
            category="1. Decision",
            caption="../report/decision.rst",
        ),
        pdfs=expand("reports/figures/decision_{dataset}.pdf", dataset=grid_datasets()),
    log:
        "results/logs/report/decision.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m clsbench.decision --best {input.best} --out-dir reports/tables --figures reports/figures "
        "-- {input.metrics} > {log} 2>&1"
