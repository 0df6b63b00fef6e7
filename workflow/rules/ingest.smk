# One job per image converts and normalizes: a second per-image rule would add 10,000 jobs
# to the plan of a 10,000-image dataset (profiles/slurm/README.md, Scale).
rule ingest:
    input:
        image_files,
    output:
        image=directory("results/{sample}/image.ome.zarr"),
        normalized=directory("results/{sample}/normalized.ome.zarr"),
        stats="results/{sample}/normalization.json",
    log:
        "logs/ingest/{sample}.log",
    benchmark:
        "benchmarks/ingest/{sample}.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../../envs/imaging.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("ingest.py"),
        sample=sample_json,
        ingest_settings=section_json("ingest"),
        settings=section_json("normalize"),
    shell:
        "{params.python} {params.script} --sample {params.sample:q}"
        " --ingest-settings {params.ingest_settings:q} --settings {params.settings:q}"
        " --image {output.image:q} --out {output.normalized:q} --stats {output.stats:q}"
        " --threads {threads} > {log:q} 2>&1"
