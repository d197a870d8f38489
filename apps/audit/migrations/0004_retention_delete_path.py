"""Let the append-only trigger pass the DELETEs of audit retention, and nothing else.

A DELETE passes only when the transaction-local setting
thermacore.audit_retention_through is set, the row lies at or below it, and
the table holds an audit.retention_dropped entry for exactly that sequence
(written first by apps.audit.retention). Every UPDATE and TRUNCATE, and any
other DELETE, is still rejected.
"""

from django.db import migrations

INSTALL = """
CREATE OR REPLACE FUNCTION audit_entry_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed_through bigint;
    recorded boolean;
BEGIN
    IF TG_OP = 'DELETE' THEN
        allowed_through := NULLIF(current_setting('thermacore.audit_retention_through', true), '')::bigint;
        IF allowed_through IS NOT NULL AND OLD.sequence <= allowed_through THEN
            EXECUTE format(
                'SELECT EXISTS (SELECT 1 FROM %I.%I WHERE action = $1 AND sequence > $2 '
                'AND (detail->>''through_sequence'')::bigint = $2)',
                TG_TABLE_SCHEMA, TG_TABLE_NAME
            ) INTO recorded USING 'audit.retention_dropped', allowed_through;
            IF recorded THEN
                RETURN OLD;
            END IF;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit entries are append-only: % on %.% rejected', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit entries can only be inserted, through apps.audit.services.record, and dropped by apps.audit.retention.';
END;
$$;
"""

# The function of migration 0002, which rejects every DELETE.
REMOVE = """
CREATE OR REPLACE FUNCTION audit_entry_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only: % on %.% rejected', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit entries can only be inserted, through apps.audit.services.record.';
END;
$$;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0003_security_settings_and_export_jobs"),
    ]

    operations = [
        migrations.RunSQL(INSTALL, REMOVE),
    ]
