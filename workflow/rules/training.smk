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


# The box detector (detection.enabled), from the 2D samples with a boxes column.
rule train_detector:
    input:
        data=job_files("train_detector"),
        after=job_waits_for("train_detector"),
    output:
        model=directory("results/models/{model}"),
        curve=report(
            "results/models/{model}_training.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="{model}",
        ),
    log:
        "logs/jobs/train_detector-{model}.log",
    benchmark:
        "benchmarks/train_detector-{model}.tsv"
    wildcard_constraints:
        model=r"detector_2d",
    retries: config["resources"]["retries"]
    conda:
        env_file("tensorflow")
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 4),
        runtime=scaled("runtime", 8),
        gpu=1,
    params:
        task=job_task("train_detector"),
        digest=job_digest("train_detector"),
        snakescope=snakescope_for("tensorflow"),
    shell:
        RUN


# Every model trained here as a bioimage.io package; its own job, so that changing
# `publication` re-exports without retraining. N2V's network loads in the n2v family's env.
rule export_model:
    input:
        data=lambda wc: PLAN.job(f"export-{wc.model}").inputs,
        after=lambda wc: [ancient(p) for p in PLAN.job(f"export-{wc.model}").after],
    output:
        "results/models/{model}.bioimage.io.zip",
    log:
        "logs/jobs/export-{model}.log",
    wildcard_constraints:
        model=r"(n2v|care|stardist|unet|classifier)_[23]d",
    retries: config["resources"]["retries"]
    conda:
        lambda wc: env_file("n2v" if wc.model.startswith("n2v") else "tensorflow")
    threads: 1
    resources:
        mem_mb=scaled("mem_mb", 2),
        runtime=scaled("runtime"),
    params:
        task=job_task(lambda wc: f"export-{wc.model}"),
        digest=job_digest(lambda wc: f"export-{wc.model}"),
        snakescope=lambda wc: snakescope_for(
            "n2v" if wc.model.startswith("n2v") else "tensorflow"
        ),
    shell:
        RUN


# A sweep (config `sweep`): one job per combination of a model's settings, so a cluster
# trains them in parallel; each is scored on the validation split it shares with the others.
rule train_candidate:
    input:
        data=lambda wc: PLAN.job(f"train_candidate-{wc.model}-{wc.combo}").inputs,
        after=lambda wc: [
            ancient(p)
            for p in PLAN.job(f"train_candidate-{wc.model}-{wc.combo}").after
        ],
    output:
        model=directory("results/models/sweeps/{model}/{combo}"),
    log:
        "logs/jobs/train_candidate-{model}-{combo}.log",
    benchmark:
        "benchmarks/train_candidate-{model}-{combo}.tsv"
    wildcard_constraints:
        model=r"(n2v|care|stardist|unet|classifier)_[23]d",
        combo=r"[^/]+=[^/]*",
    retries: config["resources"]["retries"]
    conda:
        lambda wc: env_file("n2v" if wc.model.startswith("n2v") else "tensorflow")
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 4),
        runtime=scaled("runtime", 8),
        gpu=1,
    params:
        task=job_task(lambda wc: f"train_candidate-{wc.model}-{wc.combo}"),
        digest=job_digest(lambda wc: f"train_candidate-{wc.model}-{wc.combo}"),
        snakescope=lambda wc: snakescope_for(
            "n2v" if wc.model.startswith("n2v") else "tensorflow"
        ),
    shell:
        RUN


# The best candidate by `sweep.metric` becomes the model every later job uses (a copy), with
# the sweep's table and overlaid curves; only swept models match, and for them it wins.
rule select_model:
    input:
        data=lambda wc: PLAN.job(f"select_model-{wc.model}").inputs,
    output:
        model=directory("results/models/{model}"),
        curve=report(
            "results/models/{model}_training.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="{model}",
        ),
        table=report(
            "results/models/{model}_sweep.csv",
            caption="../report/sweep.rst",
            category="Training",
            subcategory="{model}",
        ),
        figure=report(
            "results/models/{model}_sweep.png",
            caption="../report/sweep.rst",
            category="Training",
            subcategory="{model}",
        ),
    log:
        "logs/jobs/select_model-{model}.log",
    wildcard_constraints:
        model="|".join(PLAN.swept_models()) or "(?!)",
    conda:
        env_file("imaging")
    threads: 1
    params:
        task=job_task(lambda wc: f"select_model-{wc.model}"),
        digest=job_digest(lambda wc: f"select_model-{wc.model}"),
        snakescope=snakescope_for("imaging"),
    shell:
        RUN


ruleorder: select_model > train_restoration
ruleorder: select_model > train_segmentation
ruleorder: select_model > train_classifier
