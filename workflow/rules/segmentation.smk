rule train_stardist:
    input:
        images=lambda wc: [
            f"results/{s.sample_id}/normalized.ome.zarr"
            for s in training_samples(wc.ndim)
        ],
        labels=lambda wc: [s.labels for s in training_samples(wc.ndim)],
    output:
        model=directory("results/models/stardist_{ndim}"),
        curve=report(
            "results/models/stardist_{ndim}/history.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="StarDist {ndim}",
        ),
    log:
        "logs/train_stardist/{ndim}.log",
    benchmark:
        "benchmarks/train_stardist/{ndim}.tsv"
    wildcard_constraints:
        ndim="2d|3d",
    retries: config["resources"]["retries"]
    conda:
        "../../envs/tensorflow.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(4),
        runtime=runtime(8),
        gpu=1,
    params:
        python=python_for("main"),
        script=script("train_stardist.py"),
        sources=lambda wc: training_sources(wc.ndim),
        settings=section_json("segmentation"),
        split=lambda wc: f"{config['segmentation']['split_dir']}/stardist_{wc.ndim}.json",
        seed=config["seed"],
    shell:
        "{params.python} {params.script} --sources {params.sources:q} --settings {params.settings:q}"
        " --split {params.split:q} --seed {params.seed} --out {output.model:q} > {log:q} 2>&1"


rule segment:
    input:
        image=analysis_image,
        model=segmentation_model,
    output:
        directory("results/{sample}/labels.ome.zarr"),
    log:
        "logs/segment/{sample}.log",
    benchmark:
        "benchmarks/segment/{sample}.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../../envs/tensorflow.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(2),
        runtime=runtime(2),
        gpu=1,
    params:
        python=python_for("main"),
        script=script("segment.py"),
        channel=lambda wc: SAMPLES[wc.sample].channel,
        settings=section_json("segmentation"),
    shell:
        "{params.python} {params.script} --model {input.model:q} --image {input.image:q}"
        " --channel {params.channel} --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule measure:
    input:
        labels="results/{sample}/labels.ome.zarr",
        image="results/{sample}/image.ome.zarr",
    output:
        "results/{sample}/objects.parquet",
    log:
        "logs/measure/{sample}.log",
    retries: config["resources"]["retries"]
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb(2),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("measure.py"),
        channel=lambda wc: SAMPLES[wc.sample].channel,
    shell:
        "{params.python} {params.script} --labels {input.labels:q} --image {input.image:q}"
        " --channel {params.channel} --out {output:q} > {log:q} 2>&1"


rule qc_segmentation:
    input:
        image=analysis_image,
        labels="results/{sample}/labels.ome.zarr",
    output:
        report(
            "results/{sample}/qc/segmentation.png",
            caption="../report/segmentation_overlay.rst",
            category="Segmentation",
            subcategory="{sample}",
        ),
    log:
        "logs/qc_segmentation/{sample}.log",
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("qc_overlay.py"),
        channel=lambda wc: SAMPLES[wc.sample].channel,
    shell:
        "{params.python} {params.script} --image {input.image:q} --labels {input.labels:q}"
        " --channel {params.channel} --title {wildcards.sample} --out {output:q} > {log:q} 2>&1"
