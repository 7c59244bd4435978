"""The scheduler: Celery routes generation jobs to pools by the active plan's routing table."""
