from django.contrib import admin

from training import models


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "number", "name", "status", "created_at"]
    list_filter = ["project", "kind", "status"]
