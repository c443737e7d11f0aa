"""Factories of the core app's models."""

from __future__ import annotations

import factory
from django.utils import timezone

from core.models import WorkerHeartbeat


class WorkerHeartbeatFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = WorkerHeartbeat

    name = factory.Sequence(lambda n: f"worker{n}@host")
    host = "host"
    pid = factory.Sequence(lambda n: 1000 + n)
    queues = factory.LazyFunction(lambda: ["default", "gpu"])
    device = "cpu"
    concurrency = 1
    started_at = factory.LazyFunction(timezone.now)
    last_seen = factory.LazyFunction(timezone.now)
