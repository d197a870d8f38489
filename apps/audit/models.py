from django.db import models

from .choices import ActorType, AuditAction, Outcome


class AuditEntryQuerySet(models.QuerySet):
    def in_chain_order(self):
        return self.order_by("sequence")


class AuditEntry(models.Model):
    """One recorded event of a tenant, e.g. "operator anna changed Boiler 2's status from 192.0.2.7".

    Entries form a hash chain per tenant schema: `hash` covers the entry's
    content and `previous_hash`, which is the hash of the entry with the
    sequence before it. A database trigger rejects UPDATE and DELETE, so
    entries are only ever appended (see apps.audit.services.record).
    Actors and objects are stored by id and name, not by foreign key, so
    deleting a user or a unit never touches its history.
    """

    sequence = models.PositiveBigIntegerField(help_text="Position in the tenant's chain, from 1 without gaps.")
    time = models.DateTimeField(db_index=True)
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, help_text="User id, API key id, job or agent name.")
    actor_name = models.CharField(max_length=150, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=64, blank=True, db_index=True)
    action = models.CharField(max_length=64, choices=AuditAction.choices)
    object_type = models.CharField(max_length=100, blank=True, help_text='"app_label.model", e.g. "units.unit".')
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.SUCCESS)
    changes = models.JSONField(
        default=dict, blank=True, help_text='Changed fields as {"field": [before, after]}; null for "absent".'
    )
    detail = models.JSONField(default=dict, blank=True, help_text="Further facts, e.g. the filters of an export.")
    previous_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-sequence"]
        verbose_name_plural = "audit entries"
        constraints = [
            models.UniqueConstraint(fields=["sequence"], name="audit_entry_unique_sequence"),
            models.CheckConstraint(condition=models.Q(sequence__gte=1), name="audit_entry_sequence_positive"),
        ]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="audit_entry_object_idx"),
            models.Index(fields=["actor_type", "actor_id"], name="audit_entry_actor_idx"),
            models.Index(fields=["action", "time"], name="audit_entry_action_time_idx"),
        ]

    def __str__(self):
        return f"#{self.sequence} {self.action} {self.object_type}:{self.object_id} by {self.actor_name or self.actor_type}"
