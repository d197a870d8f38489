from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("protocols", "0012_config_version"),
    ]

    operations = [
        migrations.AddField(
            model_name="certificaterevocationlist",
            name="distribution_point",
            field=models.CharField(
                blank=True, editable=False, max_length=1000,
                help_text="The CRL distribution point URL it was fetched from; empty for an uploaded CRL.",
            ),
        ),
        migrations.AddField(
            model_name="certificaterevocationlist",
            name="fetched_at",
            field=models.DateTimeField(
                blank=True, editable=False, null=True,
                help_text="When the distribution point last returned a valid CRL; empty for an uploaded CRL.",
            ),
        ),
    ]
