"""Every new analysis is sent to the workers after its transaction commits, however it was created."""

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver

from analysis.models import Analysis


@receiver(post_save, sender=Analysis, dispatch_uid="analysis-enqueue-on-commit")
def enqueue_new_analysis(sender, instance: Analysis, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:
        from workers.tasks import enqueue  # the web process imports Celery's client side only

        transaction.on_commit(lambda: enqueue(instance.pk))
