from rest_framework import serializers

from .choices import Role
from .models import ApiKey, User
from .services import PROFILE_FIELDS


class ProfileSerializer(serializers.ModelSerializer):
    """One's own account; only PROFILE_FIELDS are writable and any other field in a write is rejected."""

    class Meta:
        model = User
        fields = ("id", "username", "role", *PROFILE_FIELDS)
        read_only_fields = ("id", "username", "role")

    def validate(self, attrs):
        not_writable = sorted(set(self.initial_data) - set(PROFILE_FIELDS))
        if not_writable:
            raise serializers.ValidationError(
                {field: [f"{field} cannot be changed here; writable fields are {', '.join(PROFILE_FIELDS)}."]
                 for field in not_writable}
            )
        return attrs


class ApiKeySerializer(serializers.ModelSerializer):
    """An API key as listed; the key itself appears only in the response that creates it."""

    role = serializers.ChoiceField(source="user.role", choices=Role.choices)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = ApiKey
        fields = ("prefix", "name", "role", "created", "created_by", "expiry_date", "revoked", "last_used_at")
        read_only_fields = ("prefix", "created", "created_by", "revoked", "last_used_at")
