"""Writes of the training app, one module per concern: the model registry, job configuration,
jobs (start, cancel, reap), the job runner on the worker, retraining schedules."""
