rule f1_table:
    """The paper's Table 2 layout (CSV per cell + Markdown blocks) over every cell of the grid."""
    input:
        all_metrics(),
    output:
        csv=report("reports/tables/f1.csv", category="Tables", caption="../report/f1_table.rst"),
        md="reports/tables/f1.md",
    log:
        "results/logs/report/f1_table.log",
    benchmark:
        "results/benchmarks/report/f1_table.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/clsbench.yaml"
    shell:
        "python -m clsbench.tables --csv {output.csv} --md {output.md} {input} > {log} 2>&1"


rule figures:
    """Bubble plots, F1 bars, reliability diagrams and training curves from the cells' cached outputs."""
    input:
        metrics=all_metrics(),
        labels=expand("results/data/{dataset}/labels.json", dataset=grid_datasets()),
    output:
        bars=report("reports/figures/f1_bars.png", category="Figures", caption="../report/f1_bars.rst"),
        bubbles=report(
            expand("reports/figures/bubble_{dataset}.png", dataset=grid_datasets()),
            category="Figures",
            caption="../report/bubble.rst",
        ),
        reliability=report(
            expand("reports/figures/reliability_{dataset}.png", dataset=grid_datasets()),
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
            + [f"{kind}_{d}" for kind in ("bubble", "reliability", "training") for d in grid_datasets()],
        ),
    log:
        "results/logs/report/figures.log",
    benchmark:
        "results/benchmarks/report/figures.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/clsbench.yaml"
    shell:
        "python -m clsbench.plots --out reports/figures {input.metrics} > {log} 2>&1"
