rule ingest:
    input:
        image_files,
    output:
        directory("results/{sample}/image.ome.zarr"),
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
        settings=section_json("ingest"),
    shell:
        "{params.python} {params.script} --sample {params.sample:q} --settings {params.settings:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"
