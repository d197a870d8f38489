from django.db import models


class ActorType(models.TextChoices):
    USER = "user", "User"
    API_KEY = "api_key", "API key"
    SYSTEM_JOB = "system_job", "System job"
    EDGE_AGENT = "edge_agent", "Edge agent"
    ANONYMOUS = "anonymous", "Anonymous"


class AuditAction(models.TextChoices):
    """Kind of event an audit entry records; the values are stable because exports and filters use them."""

    OBJECT_CREATED = "object.created", "Object created"
    OBJECT_UPDATED = "object.updated", "Object updated"
    OBJECT_DELETED = "object.deleted", "Object deleted"
    OBJECTS_IMPORTED = "object.imported", "Objects imported"

    LOGIN = "auth.login", "Login"
    LOGIN_FAILED = "auth.login_failed", "Login failed"
    LOGOUT = "auth.logout", "Logout"
    LOCKOUT = "auth.lockout", "Account locked out"
    TOKEN_ISSUED = "auth.token_issued", "Token issued"
    TOKEN_REFRESHED = "auth.token_refreshed", "Token refreshed"
    TOKEN_REVOKED = "auth.token_revoked", "Token revoked"
    API_KEY_CREATED = "auth.api_key_created", "API key created"
    API_KEY_REVOKED = "auth.api_key_revoked", "API key revoked"
    PERMISSION_DENIED = "auth.permission_denied", "Permission denied"

    ALARM_ACKNOWLEDGED = "alarm.acknowledged", "Alarm acknowledged"
    ALARM_SHELVED = "alarm.shelved", "Alarm shelved"
    ALARM_UNSHELVED = "alarm.unshelved", "Alarm unshelved"
    SETPOINT_WRITTEN = "setpoint.written", "Setpoint written"
    DATA_EXPORTED = "data.exported", "Data exported"
    AUDIT_EXPORTED = "audit.exported", "Audit trail exported"
    AUDIT_EXPORT_DELETED = "audit.export_deleted", "Audit export file deleted"
    TENANT_LIFECYCLE = "tenant.lifecycle", "Tenant lifecycle event"

    SECURITY_ALARM = "security.alarm", "Security alarm raised"
    RETENTION_DROPPED = "audit.retention_dropped", "Old entries archived and dropped"


class SecurityTrigger(models.TextChoices):
    """Pattern of audit entries that raises a security alarm; stored as the alarm entry's detail["trigger"]."""

    FAILED_LOGIN_BURST = "failed_login_burst", "Burst of failed logins"
    DENIAL_BURST = "denial_burst", "Repeated permission denials"
    NEW_NETWORK = "new_network", "Credential used from a new network"
    OFF_HOURS_SETPOINT = "off_hours_setpoint", "Setpoint written outside working hours"
    CERTIFICATE_EXPIRING = "certificate_expiring", "Certificate expires within 30 days"
    CERTIFICATE_EXPIRED = "certificate_expired", "Certificate has expired"


class CredentialType(models.TextChoices):
    JWT = "jwt", "JWT of a user"
    API_KEY = "api_key", "API key"


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"


class ExportStatus(models.TextChoices):
    PENDING = "pending", "Waiting for a worker"
    RUNNING = "running", "Writing"
    DONE = "done", "Ready"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "File deleted after the retention period"
