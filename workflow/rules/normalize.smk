rule normalize:
    input:
        "results/{sample}/image.ome.zarr",
    output:
        image=directory("results/{sample}/normalized.ome.zarr"),
        stats="results/{sample}/normalization.json",
    log:
        "logs/normalize/{sample}.log",
    benchmark:
        "benchmarks/normalize/{sample}.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../../envs/imaging.yaml"
    threads: config["resources"]["threads"]
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("normalize.py"),
        settings=section_json("normalize"),
        ingest_settings=section_json("ingest"),
    shell:
        "{params.python} {params.script} --image {input:q} --out {output.image:q}"
        " --stats {output.stats:q} --settings {params.settings:q}"
        " --ingest-settings {params.ingest_settings:q} --threads {threads} > {log:q} 2>&1"
