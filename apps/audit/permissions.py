from rest_framework.permissions import BasePermission

# TODO: ask the role layer (apps.accounts.roles: view and export capabilities) once it has landed.
READ_PERMISSION = "audit.view_auditentry"


class CanReadAuditTrail(BasePermission):
    """Allow reading and exporting the audit trail to users with the audit entry view permission."""

    message = f"Reading the audit trail requires the {READ_PERMISSION} permission (the Auditor or Admin role)."

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_authenticated and request.user.has_perm(READ_PERMISSION))
