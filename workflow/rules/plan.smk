# A job's plan file (what it does, sample by sample) is rewritten only when its digest
# changes, i.e. when its samples, their settings or an upstream stage's recipe change.
rule plan:
    output:
        "results/jobs/{job}.plan.json",
    log:
        "logs/jobs/plan-{job}.log",
    localrule: True
    params:
        digest=lambda wc: PLAN.job(wc.job).digest,
    run:
        PLAN.write_task(wildcards.job, output[0], log[0])
