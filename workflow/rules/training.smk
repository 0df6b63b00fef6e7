# One job per model trained: its plan lists the training samples and only the settings
# that change the model, so prediction-only settings never retrain.
rule train_restoration:
    input:
        task=plan_path("train_restoration-{model}"),
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
        f"../../envs/{'n2v' if config['restoration']['method'] == 'n2v' else 'tensorflow'}.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 4),
        runtime=scaled("runtime", 8),
        gpu=1,
    params:
        snakescope=snakescope_for(
            "n2v" if config["restoration"]["method"] == "n2v" else "main"
        ),
    shell:
        RUN


rule train_segmentation:
    input:
        task=plan_path("train_segmentation-{model}"),
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
        "../../envs/tensorflow.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 4),
        runtime=scaled("runtime", 8),
        gpu=1,
    params:
        snakescope=snakescope_for("main"),
    shell:
        RUN


rule train_classifier:
    input:
        task=plan_path("train_classifier-{model}"),
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
        "../../envs/tensorflow.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 4),
        runtime=scaled("runtime", 4),
        gpu=1,
    params:
        snakescope=snakescope_for("main"),
    shell:
        RUN
