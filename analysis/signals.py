"""Every new analysis is sent to the workers after its transaction commits, however it was created; signing
out of the site or changing the password ends the user's API token too."""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_save, pre_save
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


@receiver(pre_save, sender=get_user_model(), dispatch_uid="token-ends-with-password")
def delete_api_token_on_new_password(sender, instance, raw: bool = False, update_fields=None, **kwargs) -> None:
    # A new password says the old one may be known to someone else, who may have made a token with it: the
    # token ends with it, wherever the password was changed (the page, a reset, the admin, changepassword).
    if raw or instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    stored = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    if stored is not None and stored != instance.password:
        Token.objects.filter(user_id=instance.pk).delete()
