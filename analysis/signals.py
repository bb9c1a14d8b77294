"""Every new analysis is sent to the workers after its transaction commits, however it was created; signing
out of the site ends the user's API token too."""

from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token

from analysis.models import Analysis


@receiver(post_save, sender=Analysis, dispatch_uid="analysis-enqueue-on-commit")
def enqueue_new_analysis(sender, instance: Analysis, created: bool, raw: bool = False, **kwargs) -> None:
    if created and not raw:
        from workers.tasks import enqueue  # the web process imports Celery's client side only

        transaction.on_commit(lambda: enqueue(instance.pk))


@receiver(user_logged_out, dispatch_uid="token-ends-with-sign-out")
def delete_api_token(sender, request, user, **kwargs) -> None:
    # A token left behind on a shared tablet or in a script would read the clinic's records for as long
    # as the account lives; whoever signs out means to leave, and asks for a new token when they need one.
    if user is not None:
        Token.objects.filter(user=user).delete()
