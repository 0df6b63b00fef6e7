rule provenance:
    input:
        image_files,
        "results/{sample}/image.ome.zarr",
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
        config=json.dumps(config, sort_keys=True),
        inputs=lambda wc: SAMPLES[wc.sample].input_files(),
        repo=str(REPO),
    shell:
        "{params.python} {params.script} --sample {params.sample:q} --config {params.config:q}"
        " --inputs {params.inputs:q} --repo {params.repo:q} --out {output:q} > {log:q} 2>&1"


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
