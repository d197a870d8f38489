from rest_framework import serializers

from .models import AuditEntry


class AuditEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEntry
        fields = (
            "sequence", "time", "actor_type", "actor_id", "actor_name", "source_ip", "user_agent", "request_id",
            "action", "object_type", "object_id", "object_repr", "outcome", "changes", "detail", "previous_hash",
            "hash",
        )
        read_only_fields = fields
