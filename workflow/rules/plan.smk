# A job's plan file (what it does, sample by sample) is rewritten only when its digest
# changes, i.e. when its samples, their settings or an upstream stage's recipe change.
rule plan:
    output:
        "results/jobs/{job}.plan.json",
    params:
        digest=lambda wc: PLAN.job(wc.job).digest,
    localrule: True
    run:
        PLAN.write_task(wildcards.job, output[0])
