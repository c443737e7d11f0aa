from django.contrib import admin

from interchange import models

admin.site.register(models.ExportJob)
