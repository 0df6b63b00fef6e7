rule prepare_target:
    input:
        target=target_files,
        image="results/{sample}/image.ome.zarr",
    output:
        image=directory("results/{sample}/target.ome.zarr"),
        stats="results/{sample}/target_normalization.json",
    log:
        "logs/prepare_target/{sample}.log",
    benchmark:
        "benchmarks/prepare_target/{sample}.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../../envs/imaging.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("prepare_target.py"),
        sample=sample_json,
        settings=section_json("normalize"),
        ingest_settings=section_json("ingest"),
    shell:
        "{params.python} {params.script} --sample {params.sample:q} --image {input.image:q}"
        " --settings {params.settings:q} --ingest-settings {params.ingest_settings:q}"
        " --out {output.image:q} --stats {output.stats:q} --threads {threads} > {log:q} 2>&1"


rule train_restoration:
    input:
        images=lambda wc: [
            f"results/{s.sample_id}/normalized.ome.zarr"
            for s in restoration_training_samples(wc.ndim)
        ],
        targets=lambda wc: [
            f"results/{s.sample_id}/target.ome.zarr"
            for s in restoration_training_samples(wc.ndim)
            if RESTORATION == "care"
        ],
    output:
        model=directory("results/models/{method}_{ndim}"),
        curve=report(
            "results/models/{method}_{ndim}_training.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="{method} {ndim}",
        ),
    log:
        "logs/train_restoration/{method}_{ndim}.log",
    benchmark:
        "benchmarks/train_restoration/{method}_{ndim}.tsv"
    wildcard_constraints:
        ndim="2d|3d",
        method="n2v|care",
    retries: config["resources"]["retries"]
    conda:
        restoration_conda()
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(4),
        runtime=runtime(8),
        gpu=1,
    params:
        python=python_for(restoration_env()),
        script=script("train_restoration.py"),
        ndim=lambda wc: wc.ndim[0],
        sources=lambda wc: restoration_sources(wc.ndim),
        settings=section_json("restoration"),
        seed=config["seed"],
    shell:
        "{params.python} {params.script} --method {wildcards.method} --ndim {params.ndim}"
        " --sources {params.sources:q} --settings {params.settings:q} --seed {params.seed}"
        " --out {output.model:q} --curve {output.curve:q} --threads {threads} > {log:q} 2>&1"


rule restore:
    input:
        image="results/{sample}/normalized.ome.zarr",
        model=restoration_model,
    output:
        directory("results/{sample}/restored.ome.zarr"),
    log:
        "logs/restore/{sample}.log",
    benchmark:
        "benchmarks/restore/{sample}.tsv"
    retries: config["resources"]["retries"]
    conda:
        restoration_conda()
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(2),
        runtime=runtime(2),
        gpu=1,
    params:
        python=python_for(restoration_env()),
        script=script("restore.py"),
        method=RESTORATION,
        channel=lambda wc: SAMPLES[wc.sample].channel,
        settings=section_json("restoration"),
        ingest_settings=section_json("ingest"),
    shell:
        "{params.python} {params.script} --method {params.method} --model {input.model:q}"
        " --image {input.image:q} --channel {params.channel} --settings {params.settings:q}"
        " --ingest-settings {params.ingest_settings:q} --out {output:q} --threads {threads}"
        " > {log:q} 2>&1"


rule qc_restoration:
    input:
        image="results/{sample}/normalized.ome.zarr",
        restored="results/{sample}/restored.ome.zarr",
        target=target_image,
    output:
        report(
            "results/{sample}/qc/restoration.png",
            caption="../report/restoration.rst",
            category="Restoration",
            subcategory="{sample}",
        ),
    log:
        "logs/qc_restoration/{sample}.log",
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("qc_restoration.py"),
        channel=lambda wc: SAMPLES[wc.sample].channel,
        target=lambda wc, input: f"--target {input.target}" if input.target else "",
    shell:
        "{params.python} {params.script} --image {input.image:q} --restored {input.restored:q}"
        " {params.target} --channel {params.channel} --title {wildcards.sample}"
        " --out {output:q} > {log:q} 2>&1"


rule evaluate_restoration:
    input:
        image="results/{sample}/normalized.ome.zarr",
        restored="results/{sample}/restored.ome.zarr",
        target="results/{sample}/target.ome.zarr",
    output:
        "results/{sample}/restoration_metrics.csv",
    log:
        "logs/evaluate_restoration/{sample}.log",
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("evaluate_restoration.py"),
        channel=lambda wc: SAMPLES[wc.sample].channel,
    shell:
        "{params.python} {params.script} --image {input.image:q} --restored {input.restored:q}"
        " --target {input.target:q} --channel {params.channel} --sample {wildcards.sample}"
        " --out {output:q} > {log:q} 2>&1"


rule gather_restoration_metrics:
    input:
        lambda wc: [
            f"results/{s}/restoration_metrics.csv"
            for s in samples_with("target")
            if s in restored_samples()
        ],
    output:
        report(
            "results/metrics/restoration.csv",
            caption="../report/restoration_metrics.rst",
            category="Metrics",
        ),
    log:
        "logs/gather_metrics/restoration.log",
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("gather_metrics.py"),
    shell:
        "{params.python} {params.script} --kind restoration --inputs {input:q} --out {output:q} > {log:q} 2>&1"
