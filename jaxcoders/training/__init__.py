"""Training, in the order a step is built:

    sharding    the ("data", "latent") mesh, partition specs, multi-host helpers
    schedules   LR / k / L1-coefficient schedules, the k plan, the geometric-median b_dec
    optimizer   clip + Adam + LR schedule
    state       TrainState and its partition specs
    step        the one jitted train step factory
    resample    L1 dead-latent resampling (inside the step)
    fit         `fit` over in-memory batches
    sources     in-memory batch sources and this process's rows of a global batch
    evaluate    validation statistics
    checkpoint  orbax checkpoints of a run
    workdir     config.json and metrics.jsonl of a run directory
    metrics     TensorBoard sink
    loop        `train_and_evaluate`: the store-backed loop with checkpoints, metrics and export
"""
