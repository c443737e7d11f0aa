"""Models of the cross-cutting pieces (they reference only the user model)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class IdempotencyRecord(models.Model):
    """The stored response of a write made with an Idempotency-Key, replayed on retry."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=128)
    scope = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Moved from the annotations app; the table keeps its name (no data is copied).
        db_table = "annotations_idempotencyrecord"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="uniq_idempotency_key_per_user")]


class OutboxMessage(models.Model):
    """A task to send to the broker, written in the transaction of the row it works on.

    The transactional outbox: a write that needs a task commits this row with it, so the task
    can never be lost between the commit and the broker (a broker outage used to leave images,
    training and export jobs queued for ever). It is sent right after the commit; while the
    broker is down it waits here and ``core.outbox_dispatch`` sends it once the broker is back.
    The row is deleted once the broker has the message.
    """

    name = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    queue = models.CharField(max_length=64)
    task_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        indexes = [models.Index(fields=["created_at"], name="outbox_created")]

    def __str__(self) -> str:
        return f"{self.name}{self.args} -> {self.queue}"


class WorkerHeartbeat(models.Model):
    """A Celery worker as it last reported itself (core.workers): written when it starts, then
    every ``WORKER_HEARTBEAT_SECONDS`` by its main process, and marked stopped when it shuts
    down. Works on every broker (the embedded one has no remote control): the database is the
    one thing every worker and the web share."""

    name = models.CharField(max_length=255, unique=True, help_text="Celery node name, e.g. gpu@host.")
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField(help_text="The worker's main process.")
    queues = models.JSONField(default=list)
    device = models.CharField(max_length=32, blank=True, help_text="cpu or cuda:N; empty while not yet known.")
    device_name = models.CharField(max_length=255, blank=True)
    concurrency = models.PositiveIntegerField(default=0)
    # What the worker runs now: [{"id", "name", "args", "started_at"}] (cheap: its own bookkeeping).
    tasks = models.JSONField(default=list)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["last_seen"], name="worker_heartbeat_seen")]

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"
