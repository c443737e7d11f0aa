from django.contrib import admin

from core import models


@admin.register(models.IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "key", "scope", "status_code", "created_at"]


@admin.register(models.WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["name", "host", "pid", "device", "device_name", "concurrency", "last_seen", "stopped_at"]
    readonly_fields = [f.name for f in models.WorkerHeartbeat._meta.fields]
