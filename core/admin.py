from django.contrib import admin

from core import models


@admin.register(models.IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "key", "scope", "status_code", "created_at"]
