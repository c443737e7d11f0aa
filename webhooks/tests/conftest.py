from webhooks.tests.support import eager_celery, loopback, receiver

__all__ = ["eager_celery", "loopback", "receiver"]
