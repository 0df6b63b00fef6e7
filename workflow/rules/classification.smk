rule train_classifier:
    input:
        images=lambda wc: [
            f"results/{s.sample_id}/normalized.ome.zarr"
            for s in classifier_training_samples(wc.ndim)
        ],
    output:
        model=directory("results/models/classifier_{ndim}"),
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
    shell:
        "{params.python} {params.script} --sources {params.sources:q} --settings {params.settings:q}"
        " --split {params.split:q} --seed {params.seed} --out {output.model:q} > {log:q} 2>&1"


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
