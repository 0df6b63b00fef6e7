rule train_segmentation:
    input:
        images=lambda wc: [
            analysis_path(s.sample_id) for s in training_samples(wc.ndim)
        ],
        labels=lambda wc: [s.labels for s in training_samples(wc.ndim)],
    output:
        model=directory("results/models/{method}_{ndim}"),
        curve=report(
            "results/models/{method}_{ndim}_training.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="{method} {ndim}",
        ),
    log:
        "logs/train_segmentation/{method}_{ndim}.log",
    benchmark:
        "benchmarks/train_segmentation/{method}_{ndim}.tsv"
    wildcard_constraints:
        ndim="2d|3d",
        method="stardist|unet",
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
        script=lambda wc: script(f"train_{wc.method}.py"),
        sources=lambda wc: training_sources(wc.ndim),
        settings=section_json("segmentation"),
        split=lambda wc: f"{config['segmentation']['split_dir']}/{wc.method}_{wc.ndim}.json",
        seed=config["seed"],
    shell:
        "{params.python} {params.script} --sources {params.sources:q} --settings {params.settings:q}"
        " --split {params.split:q} --seed {params.seed} --out {output.model:q}"
        " --curve {output.curve:q} > {log:q} 2>&1"


rule segment_part:
    input:
        image=analysis_image,
        model=segmentation_model,
    output:
        temp(directory("results/{sample}/labels_parts/part{part}.zarr")),
    log:
        "logs/segment_part/{sample}_{part}.log",
    benchmark:
        "benchmarks/segment_part/{sample}_{part}.tsv"
    wildcard_constraints:
        part=r"\d+",
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
        n_parts=lambda wc: len(scattered_parts(wc)),
    shell:
        "{params.python} {params.script} --part {wildcards.part} --n-parts {params.n_parts}"
        " --model {input.model:q} --image {input.image:q} --channel {params.channel}"
        " --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule segment:
    input:
        image=analysis_image,
        model=segmentation_model,
        parts=scattered_parts,
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
        gpu=lambda wc: 0 if scattered_parts(wc) else 1,
    params:
        python=python_for("main"),
        script=script("segment.py"),
        channel=lambda wc: SAMPLES[wc.sample].channel,
        settings=section_json("segmentation"),
        parts=lambda wc, input: (
            " ".join(["--parts", *input.parts]) if input.parts else ""
        ),
    shell:
        "{params.python} {params.script} --model {input.model:q} --image {input.image:q}"
        " --channel {params.channel} --settings {params.settings:q} {params.parts}"
        " --out {output:q} > {log:q} 2>&1"


rule measure:
    input:
        labels="results/{sample}/labels.ome.zarr",
        image="results/{sample}/image.ome.zarr",
    output:
        temp("results/{sample}/measurements.parquet"),
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


rule evaluate_segmentation:
    input:
        labels="results/{sample}/labels.ome.zarr",
        truth=lambda wc: SAMPLES[wc.sample].labels,
    output:
        **pixel_class_outputs(
            "results/{sample}",
            "results/{sample}/qc/class_confusion.png",
            {"class_plot": "../report/class_confusion.rst"},
            category="Segmentation",
            subcategory="{sample}",
        ),
        metrics="results/{sample}/segmentation_metrics.csv",
    log:
        "logs/evaluate_segmentation/{sample}.log",
    conda:
        "../../envs/tensorflow.yaml"
    resources:
        mem_mb=mem_mb(2),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("evaluate_segmentation.py"),
        classes=lambda wc, output: pixel_class_args(output),
    shell:
        "{params.python} {params.script} --labels {input.labels:q} --truth {input.truth:q}"
        " --sample {wildcards.sample} --out {output.metrics:q}{params.classes} > {log:q} 2>&1"


rule gather_segmentation_metrics:
    input:
        metrics=lambda wc: [
            f"results/{s}/segmentation_metrics.csv" for s in evaluated_samples()
        ],
        classes=lambda wc: (
            [f"results/{s}/class_confusion.csv" for s in evaluated_samples()]
            if PIXEL_CLASSES
            else []
        ),
    output:
        **pixel_class_outputs(
            "results/metrics",
            "results/metrics/class_confusion.png",
            {
                "class_confusion": "../report/class_confusion_total.rst",
                "class_metrics": "../report/class_metrics.rst",
                "class_plot": "../report/class_confusion_total.rst",
            },
            category="Metrics",
        ),
        metrics=report(
            "results/metrics/segmentation.csv",
            caption="../report/segmentation_metrics.rst",
            category="Metrics",
        ),
    log:
        "logs/gather_metrics/segmentation.log",
    conda:
        "../../envs/tensorflow.yaml"
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("gather_metrics.py"),
        classes=lambda wc, input, output: pixel_class_args(output, input),
    shell:
        "{params.python} {params.script} --kind segmentation --inputs {input.metrics:q}"
        " --out {output.metrics:q}{params.classes} > {log:q} 2>&1"
