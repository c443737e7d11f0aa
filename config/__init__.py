"""The Django project (the design card's ``platform``; named ``config`` so that the standard
library's ``platform`` module, imported by Django, Celery and torch, is not shadowed)."""

from config.celery import app as celery_app

__all__ = ["celery_app"]
