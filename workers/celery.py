"""The Celery app. It reads the CELERY_* Django settings; the broker is REDIS_URL.

TensorFlow is imported only inside tasks (workers/tasks.py, in the child processes), never here: this
module is also imported by the web process to enqueue work.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "skinsite.settings")

app = Celery("skinsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])
