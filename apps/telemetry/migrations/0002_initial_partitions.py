from django.db import migrations


def create_initial_partitions(apps, schema_editor):
    from apps.telemetry.partitions import ensure_partitions_ahead

    ensure_partitions_ahead()


class Migration(migrations.Migration):
    dependencies = [
        ("telemetry", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(create_initial_partitions, migrations.RunPython.noop),
    ]
