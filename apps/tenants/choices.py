from django.db import models


class TenantStatus(models.TextChoices):
    """Whether a tenant is served: a suspended tenant keeps its data, but logins, API and polling stop."""

    PROVISIONING = "provisioning", "Provisioning"
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


class ProvisioningStatus(models.TextChoices):
    """State of a tenant provisioning request that a Celery worker carries out."""

    PENDING = "pending", "Waiting for a worker"
    RUNNING = "running", "Provisioning"
    SUCCEEDED = "succeeded", "Provisioned"
    FAILED = "failed", "Failed"


class ProvisioningStep(models.TextChoices):
    """Step a provisioning job has reached, in order; the job's progress in percent comes from it."""

    QUEUED = "queued", "Queued"
    SCHEMA = "schema", "Creating and migrating the schema"
    DOMAIN = "domain", "Adding the domain"
    ADMIN = "admin", "Creating the first admin"
    ACTIVATING = "activating", "Activating the tenant"
    DONE = "done", "Done"


# Percent complete once a step has begun; migrating the schema takes most of the time.
PROVISIONING_PROGRESS = {
    ProvisioningStep.QUEUED: 0,
    ProvisioningStep.SCHEMA: 5,
    ProvisioningStep.DOMAIN: 80,
    ProvisioningStep.ADMIN: 85,
    ProvisioningStep.ACTIVATING: 95,
    ProvisioningStep.DONE: 100,
}
