# One job per model trained: its plan lists the training samples and only the settings
# that change the model, so prediction-only settings never retrain.
rule train_restoration:
    input:
        data=job_files("train_restoration"),
        after=job_waits_for("train_restoration"),
    output:
        model=directory("results/models/{model}"),
        curve=report(
            "results/models/{model}_training.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="{model}",
        ),
    log:
        "logs/jobs/train_restoration-{model}.log",
    benchmark:
        "benchmarks/train_restoration-{model}.tsv"
    wildcard_constraints:
        model=r"(n2v|care)_[23]d",
    retries: config["resources"]["retries"]
    conda:
        env_file(RESTORATION_ENV)
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 4),
        runtime=scaled("runtime", 8),
        gpu=1,
    params:
        task=job_task("train_restoration"),
        digest=job_digest("train_restoration"),
        snakescope=snakescope_for(RESTORATION_ENV),
    shell:
        RUN


rule train_segmentation:
    input:
        data=job_files("train_segmentation"),
        after=job_waits_for("train_segmentation"),
    output:
        model=directory("results/models/{model}"),
        curve=report(
            "results/models/{model}_training.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="{model}",
        ),
    log:
        "logs/jobs/train_segmentation-{model}.log",
    benchmark:
        "benchmarks/train_segmentation-{model}.tsv"
    wildcard_constraints:
        model=r"(stardist|unet)_[23]d",
    retries: config["resources"]["retries"]
    conda:
        env_file("tensorflow")
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 4),
        runtime=scaled("runtime", 8),
        gpu=1,
    params:
        task=job_task("train_segmentation"),
        digest=job_digest("train_segmentation"),
        snakescope=snakescope_for("tensorflow"),
    shell:
        RUN


rule train_classifier:
    input:
        data=job_files("train_classifier"),
        after=job_waits_for("train_classifier"),
    output:
        model=directory("results/models/{model}"),
        curve=report(
            "results/models/{model}_training.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="{model}",
        ),
        confusion=report(
            "results/models/{model}_confusion.png",
            caption="../report/classifier_confusion.rst",
            category="Training",
            subcategory="{model}",
        ),
    log:
        "logs/jobs/train_classifier-{model}.log",
    benchmark:
        "benchmarks/train_classifier-{model}.tsv"
    wildcard_constraints:
        model=r"classifier_[23]d",
    retries: config["resources"]["retries"]
    conda:
        env_file("tensorflow")
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 4),
        runtime=scaled("runtime", 4),
        gpu=1,
    params:
        task=job_task("train_classifier"),
        digest=job_digest("train_classifier"),
        snakescope=snakescope_for("tensorflow"),
    shell:
        RUN
