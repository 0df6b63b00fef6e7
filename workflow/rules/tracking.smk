rule track:
    input:
        labels="results/{sample}/labels.ome.zarr",
        image=analysis_image,
    output:
        ctc=directory("results/{sample}/tracks"),
        table="results/{sample}/tracks.csv",
        stats="results/{sample}/track_stats.csv",
        plot=report(
            "results/{sample}/qc/tracks.png",
            caption="../report/tracks.rst",
            category="Tracking",
            subcategory="{sample}",
        ),
    log:
        "logs/track/{sample}.log",
    benchmark:
        "benchmarks/track/{sample}.tsv"
    retries: config["resources"]["retries"]
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(2),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("track.py"),
        channel=lambda wc: SAMPLES[wc.sample].channel,
        settings=section_json("tracking"),
    shell:
        "{params.python} {params.script} --labels {input.labels:q} --image {input.image:q}"
        " --channel {params.channel} --sample {wildcards.sample} --settings {params.settings:q}"
        " --out-dir {output.ctc:q} --table {output.table:q} --stats {output.stats:q}"
        " --plot {output.plot:q} > {log:q} 2>&1"


rule evaluate_tracking:
    input:
        result="results/{sample}/tracks",
        truth=lambda wc: SAMPLES[wc.sample].tracks,
    output:
        "results/{sample}/tracking_metrics.json",
    log:
        "logs/evaluate_tracking/{sample}.log",
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(2),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("evaluate_tracking.py"),
    shell:
        "{params.python} {params.script} --result {input.result:q} --truth {input.truth:q}"
        " --out {output:q} > {log:q} 2>&1"


rule gather_tracking_metrics:
    input:
        lambda wc: [
            f"results/{s}/tracking_metrics.json"
            for s in samples_with("tracks")
            if s in tracked_samples()
        ],
    output:
        report(
            "results/metrics/tracking.csv",
            caption="../report/tracking_metrics.rst",
            category="Metrics",
        ),
    log:
        "logs/gather_metrics/tracking.log",
    conda:
        "../../envs/imaging.yaml"
    resources:
        mem_mb=mem_mb(),
        runtime=runtime(),
    params:
        python=python_for("main"),
        script=script("gather_metrics.py"),
    shell:
        "{params.python} {params.script} --kind tracking --inputs {input:q} --out {output:q} > {log:q} 2>&1"
