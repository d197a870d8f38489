from django.db import migrations, models

import apps.sensors.quality

# The readings table is created by SQL because Django cannot declare a
# partitioned table. With TimescaleDB present it becomes a hypertable.
CREATE_READINGS = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        CREATE TABLE telemetry_reading (
            sensor_id bigint NOT NULL REFERENCES sensors_sensor (id) ON DELETE CASCADE,
            time timestamptz NOT NULL,
            value double precision,
            quality smallint NOT NULL DEFAULT 0,
            PRIMARY KEY (sensor_id, time)
        );
        PERFORM create_hypertable('telemetry_reading', 'time', chunk_time_interval => interval '1 day');
    ELSE
        CREATE TABLE telemetry_reading (
            sensor_id bigint NOT NULL REFERENCES sensors_sensor (id) ON DELETE CASCADE,
            time timestamptz NOT NULL,
            value double precision,
            quality smallint NOT NULL DEFAULT 0,
            PRIMARY KEY (sensor_id, time)
        ) PARTITION BY RANGE (time);
    END IF;
END
$$;
CREATE INDEX telemetry_reading_time_idx ON telemetry_reading (time);
"""


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("sensors", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(CREATE_READINGS, reverse_sql="DROP TABLE telemetry_reading;"),
            ],
            state_operations=[
                migrations.CreateModel(
                    name="Reading",
                    fields=[
                        ("pk", models.CompositePrimaryKey("sensor_id", "time", blank=True, editable=False, primary_key=True, serialize=False)),
                        ("sensor", models.ForeignKey(on_delete=models.deletion.DO_NOTHING, related_name="+", to="sensors.sensor")),
                        ("time", models.DateTimeField()),
                        ("value", models.FloatField(null=True)),
                        ("quality", models.SmallIntegerField(choices=apps.sensors.quality.Quality.choices, default=0)),
                    ],
                    options={"db_table": "telemetry_reading", "ordering": ["sensor", "time"], "managed": False},
                ),
            ],
        ),
    ]
