"""A token that changes with every change of a device's configuration or of any point.

Pollers keep devices, points and read plans in memory across polls. While
the token is the one they saw at their last full check, they skip the
per-device checks. Statement-level triggers set a new random token in the
transaction of the change, so a poller sees the new token exactly when it
sees the change. Polls write only status columns (the device's status and a
point's last_error), which fire no trigger.
"""

from django.db import migrations

# Columns of protocols_device whose change must reach pollers. The status columns that polls
# write are left out. tests/protocols/test_polling.py checks this list against the model.
DEVICE_CONFIG_COLUMNS = (
    "name", "protocol", "host", "port", "unit_id", "poll_interval", "poll_group_id", "timeout", "enabled",
    "endpoint_path", "username", "password", "client_id", "qos", "tls_ca_file", "tls_cert_file", "tls_key_file",
    "tls_verify_hostname", "opcua_security_mode", "opcua_security_policy", "client_certificate_id",
    "dnp3_master_address", "dnp3_outstation_address", "integrity_interval", "event_poll_interval", "time_sync",
)

# Columns of protocols_point whose change must reach pollers: all but last_error, which polls write.
POINT_CONFIG_COLUMNS = (
    "device_id", "sensor_id", "register_type", "address", "data_type", "byte_order", "bit", "scale", "offset",
    "scale_factor_address", "topic", "json_path", "timestamp_path", "sparkplug_metric", "node_id",
    "sampling_interval_ms", "deadband", "dnp3_type", "dnp3_index", "dnp3_control", "dnp3_on_time_ms",
    "dnp3_off_time_ms", "dnp3_operate_mode", "enabled",
)



def _column_list(columns):
    # Quoted, because "offset" is a reserved word.
    return ", ".join(f'"{column}"' for column in columns)


CREATE_SQL = f"""
CREATE TABLE protocols_configversion (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    token uuid NOT NULL DEFAULT gen_random_uuid(),
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO protocols_configversion DEFAULT VALUES;

CREATE FUNCTION protocols_new_config_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Qualified by the schema of the changed table, whatever the session's search_path.
    EXECUTE format(
        'UPDATE %I.protocols_configversion SET token = gen_random_uuid(), changed_at = now()', TG_TABLE_SCHEMA
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER protocols_device_added_or_removed
    AFTER INSERT OR DELETE OR TRUNCATE ON protocols_device
    FOR EACH STATEMENT EXECUTE FUNCTION protocols_new_config_version();
CREATE TRIGGER protocols_device_configured
    AFTER UPDATE OF {_column_list(DEVICE_CONFIG_COLUMNS)} ON protocols_device
    FOR EACH STATEMENT EXECUTE FUNCTION protocols_new_config_version();
CREATE TRIGGER protocols_point_added_or_removed
    AFTER INSERT OR DELETE OR TRUNCATE ON protocols_point
    FOR EACH STATEMENT EXECUTE FUNCTION protocols_new_config_version();
CREATE TRIGGER protocols_point_configured
    AFTER UPDATE OF {_column_list(POINT_CONFIG_COLUMNS)} ON protocols_point
    FOR EACH STATEMENT EXECUTE FUNCTION protocols_new_config_version();

-- Lets a poll clear the errors of points that read good again without scanning their devices' points.
CREATE INDEX protocols_point_with_error ON protocols_point (device_id) WHERE last_error <> '';
"""

DROP_SQL = """
DROP INDEX protocols_point_with_error;
DROP TRIGGER protocols_point_configured ON protocols_point;
DROP TRIGGER protocols_point_added_or_removed ON protocols_point;
DROP TRIGGER protocols_device_configured ON protocols_device;
DROP TRIGGER protocols_device_added_or_removed ON protocols_device;
DROP FUNCTION protocols_new_config_version();
DROP TABLE protocols_configversion;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("protocols", "0011_certificate_revocation_lists"),
    ]

    operations = [
        migrations.RunSQL(CREATE_SQL, DROP_SQL),
    ]
