from datetime import timedelta

from django.db import migrations, models
from django.utils import timezone

# The longest back-off between attempts (notifications.RETRY_MAX_SECONDS when this migration was written).
RETRY_MAX_SECONDS = 3600


def set_next_attempt_of_retrying(apps, schema_editor):
    # A retrying delivery written before this field existed may still have a Celery retry scheduled up to the
    # longest back-off ahead. It counts as due then, so the sweep re-queues it only if that retry was lost.
    NotificationDelivery = apps.get_model("alarms", "NotificationDelivery")
    NotificationDelivery.objects.filter(status="retrying", next_attempt_at__isnull=True).update(
        next_attempt_at=timezone.now() + timedelta(seconds=RETRY_MAX_SECONDS)
    )


class Migration(migrations.Migration):

    dependencies = [
        ("alarms", "0004_notificationdelivery_claim"),
    ]

    operations = [
        migrations.AddField(
            model_name="notificationdelivery",
            name="next_attempt_at",
            field=models.DateTimeField(
                blank=True,
                help_text="Time the Celery retry of a retrying delivery is due; empty unless the delivery is retrying.",
                null=True,
            ),
        ),
        migrations.RunPython(set_next_attempt_of_retrying, migrations.RunPython.noop),
    ]
