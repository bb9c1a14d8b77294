"""`Analysis.malignant` now means "the malignant probability reaches the urgent threshold", as the triage tier
does, instead of "the single most likely class is malignant": recomputed here for every done analysis with the
shipped model's thresholds (the only ones on record)."""

from django.db import migrations


def recompute(apps, schema_editor):
    from ml.serve import tiers

    Analysis = apps.get_model("analysis", "Analysis")
    urgent = tiers.load_triage().urgent_threshold
    done = Analysis.objects.filter(status="done", malignant_probability__isnull=False)
    done.filter(malignant_probability__gte=urgent).update(malignant=True)
    done.filter(malignant_probability__lt=urgent).update(malignant=False)


def restore(apps, schema_editor):
    Analysis = apps.get_model("analysis", "Analysis")
    done = Analysis.objects.filter(status="done")
    done.filter(predicted_class__in=["mel", "bcc", "akiec"]).update(malignant=True)
    done.exclude(predicted_class__in=["mel", "bcc", "akiec"]).update(malignant=False)


class Migration(migrations.Migration):
    dependencies = [("analysis", "0008_clinic_mrn_system")]

    operations = [migrations.RunPython(recompute, restore)]
