"""Reads of export jobs (members only)."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from annotations.models import Project
from annotations.selectors import UserLike, project_get_for_user
from interchange.models import ExportJob


def export_job_get_for_user(*, user: UserLike, project_id: int, job_id: int) -> ExportJob:
    """A project's export job, for a user who may view the project (404/403 as for projects)."""
    project = project_get_for_user(user=user, project_id=project_id, capability="view")
    job = ExportJob.objects.filter(project=project, pk=job_id).first()
    if job is None:
        raise Http404("No such export job.")
    return job


def export_job_list(*, project: Project) -> QuerySet[ExportJob]:
    return ExportJob.objects.filter(project=project).order_by("-id")
