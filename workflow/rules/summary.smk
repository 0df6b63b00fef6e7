# Across samples: gathered metrics, the summary, and the check that no sample failed.
rule gather_metrics:
    input:
        lambda wc: [j.outputs[0] for j in PLAN.stage_jobs("finish")],
    output:
        report(
            "results/metrics/{kind}.csv",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
    log:
        "logs/jobs/gather_metrics-{kind}.log",
    wildcard_constraints:
        kind="restoration|segmentation|classification|tracking|detection",
    conda:
        env_file("imaging")
    params:
        snakescope=snakescope_for("imaging"),
    shell:
        "{params.snakescope} gather {wildcards.kind} --out {output:q} --manifests {input:q}"
        " > {log:q} 2>&1"


# U-Net runs: the pixel-class confusion of every evaluated sample added up, and scored.
rule gather_pixel_classes:
    input:
        lambda wc: [j.outputs[0] for j in PLAN.stage_jobs("finish")],
    output:
        confusion=report(
            "results/metrics/class_confusion.csv",
            caption="../report/class_confusion_total.rst",
            category="Metrics",
        ),
        scores=report(
            "results/metrics/class_metrics.csv",
            caption="../report/class_metrics.rst",
            category="Metrics",
        ),
        plot=report(
            "results/metrics/class_confusion.png",
            caption="../report/class_confusion_total.rst",
            category="Metrics",
        ),
        percent="results/metrics/class_confusion_percent.csv",
    log:
        "logs/jobs/gather_pixel_classes.log",
    conda:
        env_file("imaging")
    params:
        snakescope=snakescope_for("imaging"),
    shell:
        "{params.snakescope} gather pixel_classes --out {output.confusion:q}"
        " {output.scores:q} {output.plot:q} {output.percent:q} --manifests {input:q} > {log:q} 2>&1"


rule summary:
    input:
        results=PLAN.job("summary-all").after,
    output:
        summary="results/summary.md",
        failures="results/failed_samples.tsv",
        report=report(
            "results/report.html",
            caption="../report/report.rst",
            category="Summary",
        ),
    log:
        "logs/jobs/summary.log",
    conda:
        env_file("imaging")
    threads: 1
    params:
        task=job_task(lambda wc: "summary-all"),
        digest=job_digest(lambda wc: "summary-all"),
        snakescope=snakescope_for("imaging"),
    shell:
        RUN


# The run ends with an error listing every failed sample (results/failed_samples.tsv)
# until they succeed; their good neighbours are complete meanwhile.
rule check_samples:
    input:
        "results/failed_samples.tsv",
    output:
        touch("results/.all_samples_ok"),
    log:
        "logs/jobs/check_samples.log",
    localrule: True
    conda:
        env_file("imaging")
    params:
        snakescope=snakescope_for("imaging"),
    shell:
        "{params.snakescope} check {input:q} > {log:q} 2>&1"
