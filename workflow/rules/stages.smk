# Per-image stages: one job per batch of samples (snakescope.pipeline.plan). Each job's
# output is its manifest: every sample's status and outputs (results/<sample>/...).
rule prepare:
    input:
        data=job_files("prepare"),
    output:
        manifest_path("prepare", "{batch}"),
    log:
        "logs/jobs/prepare-{batch}.log",
    benchmark:
        "benchmarks/prepare-{batch}.tsv"
    retries: config["resources"]["retries"]
    conda:
        env_file("imaging")
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb"),
        runtime=scaled("runtime"),
    params:
        task=job_task("prepare"),
        digest=job_digest("prepare"),
        snakescope=snakescope_for("imaging"),
    shell:
        RUN


rule restore:
    input:
        data=job_files("restore"),
        after=job_follows("restore"),
    output:
        manifest_path("restore", "{batch}"),
    log:
        "logs/jobs/restore-{batch}.log",
    benchmark:
        "benchmarks/restore-{batch}.tsv"
    retries: config["resources"]["retries"]
    conda:
        env_file(RESTORATION_ENV)
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 2),
        runtime=scaled("runtime", 2),
        gpu=1,
    params:
        task=job_task("restore"),
        digest=job_digest("restore"),
        snakescope=snakescope_for(RESTORATION_ENV),
    shell:
        RUN


rule segment:
    input:
        data=job_files("segment"),
        after=job_follows("segment"),
    output:
        manifest_path("segment", "{batch}"),
    log:
        "logs/jobs/segment-{batch}.log",
    benchmark:
        "benchmarks/segment-{batch}.tsv"
    retries: config["resources"]["retries"]
    conda:
        env_file("tensorflow")
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 2),
        runtime=scaled("runtime", 2),
        gpu=1,
    params:
        task=job_task("segment"),
        digest=job_digest("segment"),
        snakescope=snakescope_for("tensorflow"),
    shell:
        RUN


# One share of a huge sample's StarDist blocks (segmentation.scatter): its own (GPU) job;
# the sample's segment job joins the parts into labels equal to a single job's.
rule segment_part:
    input:
        data=lambda wc: PLAN.job(f"segment_part-{wc.sample}-{wc.part}").inputs,
        after=lambda wc: [
            ancient(p) for p in PLAN.job(f"segment_part-{wc.sample}-{wc.part}").after
        ],
    output:
        temp(directory("results/{sample}/labels_parts/part{part}.zarr")),
    log:
        "logs/jobs/segment_part-{sample}-{part}.log",
    benchmark:
        "benchmarks/segment_part-{sample}-{part}.tsv"
    wildcard_constraints:
        sample=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        part=r"\d+",
    retries: config["resources"]["retries"]
    conda:
        env_file("tensorflow")
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 2),
        runtime=scaled("runtime", 2),
        gpu=1,
    params:
        task=job_task(lambda wc: f"segment_part-{wc.sample}-{wc.part}"),
        digest=job_digest(lambda wc: f"segment_part-{wc.sample}-{wc.part}"),
        snakescope=snakescope_for("tensorflow"),
    shell:
        RUN


# QC, evaluations (StarDist's matching), tracking, provenance: the TensorFlow family's env
# holds every library they use; no GPU is asked for.
rule finish:
    input:
        data=job_files("finish"),
        after=job_follows("finish"),
    output:
        manifest_path("finish", "{batch}"),
    log:
        "logs/jobs/finish-{batch}.log",
    benchmark:
        "benchmarks/finish-{batch}.tsv"
    retries: config["resources"]["retries"]
    conda:
        env_file("tensorflow")
    threads: config["resources"]["threads"]
    resources:
        mem_mb=scaled("mem_mb", 2),
        runtime=scaled("runtime"),
    params:
        task=job_task("finish"),
        digest=job_digest("finish"),
        snakescope=snakescope_for("tensorflow"),
    shell:
        RUN
