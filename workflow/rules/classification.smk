rule train_classifier:
    input:
        images=lambda wc: [
            analysis_path(s.sample_id) for s in classifier_training_samples(wc.ndim)
        ],
        points=lambda wc: classifier_point_files(wc.ndim),
        patches=lambda wc: classifier_patch_inputs(wc.ndim),
    output:
        model=directory("results/models/classifier_{ndim}"),
        confusion=report(
            "results/models/classifier_{ndim}_confusion.png",
            caption="../report/classifier_confusion.rst",
            category="Training",
            subcategory="classifier {ndim}",
        ),
    log:
        "logs/train_classifier/{ndim}.log",
    benchmark:
        "benchmarks/train_classifier/{ndim}.tsv"
    wildcard_constraints:
        ndim="2d|3d",
    retries: config["resources"]["retries"]
    conda:
        "../../envs/tensorflow.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(4),
        runtime=runtime(4),
        gpu=1,
    params:
        python=python_for("main"),
        script=script("train_classifier.py"),
        sources=lambda wc: classifier_sources(wc.ndim),
        settings=section_json("classification"),
        split=lambda wc: f"{config['segmentation']['split_dir']}/classifier_{wc.ndim}.csv",
        seed=config["seed"],
        patch_folder=lambda wc: classifier_patch_folder(wc.ndim) or "none",
    shell:
        "{params.python} {params.script} --sources {params.sources:q} --settings {params.settings:q}"
        " --split {params.split:q} --seed {params.seed} --ndim {wildcards.ndim}"
        " --patch-folder {params.patch_folder:q} --out {output.model:q}"
        " --confusion {output.confusion:q} > {log:q} 2>&1"


rule classify:
    input:
        objects="results/{sample}/measurements.parquet",
        image=analysis_image,
        model=classifier_model,
    output:
        "results/{sample}/objects.parquet",
    log:
        "logs/classify/{sample}.log",
    retries: config["resources"]["retries"]
    conda:
        "../../envs/tensorflow.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(2),
        runtime=runtime(),
        gpu=lambda wc: 1 if classifier_model(wc) else 0,
    params:
        python=python_for("main"),
        script=script("classify.py"),
        channel=lambda wc: SAMPLES[wc.sample].channel,
        model=lambda wc, input: str(input.model) if input.model else "none",
    shell:
        "{params.python} {params.script} --objects {input.objects:q} --image {input.image:q}"
        " --channel {params.channel} --model {params.model:q} --out {output:q} > {log:q} 2>&1"


rule evaluate_classification:
    input:
        labels="results/{sample}/labels.ome.zarr",
        objects="results/{sample}/objects.parquet",
        model=classifier_model,
        truth=class_truth_files,
    output:
        metrics="results/{sample}/classification_metrics.csv",
        confusion=report(
            "results/{sample}/qc/confusion.png",
            caption="../report/classification_confusion.rst",
            category="Classification",
            subcategory="{sample}",
        ),
    log:
        "logs/evaluate_classification/{sample}.log",
    conda:
        "../../envs/tensorflow.yaml"
    resources:
        mem_mb=mem_mb(2),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("evaluate_classification.py"),
        truth=lambda wc: SAMPLES[wc.sample].class_truth,
    shell:
        "{params.python} {params.script} --truth {params.truth:q} --labels {input.labels:q}"
        " --objects {input.objects:q} --model {input.model:q} --sample {wildcards.sample}"
        " --out {output.metrics:q} --plot {output.confusion:q} > {log:q} 2>&1"


rule gather_classification_metrics:
    input:
        lambda wc: [
            f"results/{s}/classification_metrics.csv"
            for s in classification_evaluated_samples()
        ],
    output:
        report(
            "results/metrics/classification.csv",
            caption="../report/classification_metrics.rst",
            category="Metrics",
        ),
    log:
        "logs/gather_metrics/classification.log",
    conda:
        "../../envs/tensorflow.yaml"
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("gather_metrics.py"),
    shell:
        "{params.python} {params.script} --kind classification --inputs {input:q} --out {output:q} > {log:q} 2>&1"
