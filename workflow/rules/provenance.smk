# The resolved config, written once and read by every provenance job: on each job's command
# line it would fill the plan of a 10,000-image run with 10,000 copies. Its params make it
# (and so every provenance record) rerun when the config changes.
rule workflow_config:
    output:
        "results/config.json",
    log:
        "logs/workflow_config.log",
    localrule: True
    conda:
        "../../envs/imaging.yaml"
    params:
        python=python_for("main"),
        script=script("workflow_config.py"),
        config=json.dumps(config, sort_keys=True),
    shell:
        "{params.python} {params.script} --config {params.config:q} --out {output:q} > {log:q} 2>&1"


rule provenance:
    input:
        "results/{sample}/image.ome.zarr",
        sources=sample_files,
        config="results/config.json",
    output:
        report(
            "results/{sample}/provenance.json",
            caption="../report/provenance.rst",
            category="Provenance",
            subcategory="{sample}",
        ),
    log:
        "logs/provenance/{sample}.log",
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(0.5),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("provenance.py"),
        sample=sample_json,
        repo=str(REPO),
    shell:
        "{params.python} {params.script} --sample {params.sample:q} --config {input.config:q}"
        " --inputs {input.sources:q} --repo {params.repo:q} --out {output:q} > {log:q} 2>&1"


rule summary:
    input:
        expand("results/{sample}/normalized.ome.zarr", sample=SAMPLES),
        expand("results/{sample}/provenance.json", sample=SAMPLES),
        restoration_outputs(),
        segmentation_outputs(),
        tracking_outputs(),
        classification_outputs(),
    output:
        "results/summary.md",
    log:
        "logs/summary.log",
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(0.5),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("summary.py"),
        samples=list(SAMPLES),
    shell:
        "{params.python} {params.script} --samples {params.samples:q} --out {output:q} > {log:q} 2>&1"
