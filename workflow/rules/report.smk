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
