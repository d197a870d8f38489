"""Mixins that record the creates, updates and deletes of DRF viewsets and Django admin pages.

Both write the audit entry inside the transaction of the change, so an audit
failure rolls the change back (see apps.audit.services.record).
"""

from django.db import transaction

from .choices import AuditAction
from .services import REDACTED, AuditTarget, record, snapshot


class AuditedModelViewSetMixin:
    """Record each create, update (PUT or PATCH) and delete of a ModelViewSet with its field changes.

    Put it before the viewset base: ``class UnitViewSet(AuditedModelViewSetMixin, viewsets.ModelViewSet)``.
    """

    def perform_create(self, serializer):
        with transaction.atomic():
            super().perform_create(serializer)
            instance = serializer.instance
            record(
                AuditAction.OBJECT_CREATED, actor=self.request.user, obj=instance, after=snapshot(instance),
                request=self.request,
            )

    def perform_update(self, serializer):
        with transaction.atomic():
            # The serializer sets the new values on the instance only when it saves.
            before = snapshot(serializer.instance)
            super().perform_update(serializer)
            instance = serializer.instance
            record(
                AuditAction.OBJECT_UPDATED, actor=self.request.user, obj=instance, before=before,
                after=snapshot(instance), request=self.request,
            )

    def perform_destroy(self, instance):
        with transaction.atomic():
            target, before = AuditTarget.of(instance), snapshot(instance)
            super().perform_destroy(instance)
            record(AuditAction.OBJECT_DELETED, actor=self.request.user, obj=target, before=before, request=self.request)


class AuditedModelAdminMixin:
    """Record each add, change and delete made through a ModelAdmin, its inlines and its bulk delete action.

    Put it before the admin base: ``class UnitAdmin(AuditedModelAdminMixin, admin.ModelAdmin)``.
    An admin of a model with secret fields overrides ``audit_snapshot`` to
    leave them out of the entries.
    """

    def audit_snapshot(self, obj):
        """Return the field values of one of the admin's own objects as the audit entries store them."""
        return snapshot(obj)

    def audit_detail(self, obj, action):
        """Return the detail of the entry recording ``action`` on one of the admin's own objects, or None."""
        return None

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            # The form has already set the new values on obj, but the stored row still has the old ones.
            before = self.audit_snapshot(type(obj)._default_manager.get(pk=obj.pk)) if change else None
            super().save_model(request, obj, form, change)
            action = AuditAction.OBJECT_UPDATED if change else AuditAction.OBJECT_CREATED
            record(
                action, actor=request.user, obj=obj, before=before, after=self.audit_snapshot(obj),
                detail=self.audit_detail(obj, action), request=request,
            )

    def delete_model(self, request, obj):
        with transaction.atomic():
            target, before = AuditTarget.of(obj), self.audit_snapshot(obj)
            detail = self.audit_detail(obj, AuditAction.OBJECT_DELETED)
            super().delete_model(request, obj)
            record(
                AuditAction.OBJECT_DELETED, actor=request.user, obj=target, before=before, detail=detail,
                request=request,
            )

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            doomed = [
                (AuditTarget.of(obj), self.audit_snapshot(obj), self.audit_detail(obj, AuditAction.OBJECT_DELETED))
                for obj in queryset
            ]
            super().delete_queryset(request, queryset)
            for target, before, detail in doomed:
                record(
                    AuditAction.OBJECT_DELETED, actor=request.user, obj=target, before=before, detail=detail,
                    request=request,
                )

    def save_formset(self, request, form, formset, change):
        with transaction.atomic():
            stored_pks = [inline.instance.pk for inline in formset.forms if inline.instance.pk is not None]
            stored = formset.model._default_manager.in_bulk(stored_pks)
            deleted_pks = {inline.instance.pk for inline in formset.deleted_forms if inline.instance.pk is not None}
            doomed = [(AuditTarget.of(stored[pk]), snapshot(stored[pk])) for pk in sorted(deleted_pks)]

            super().save_formset(request, form, formset, change)

            for obj in formset.new_objects:
                record(AuditAction.OBJECT_CREATED, actor=request.user, obj=obj, after=snapshot(obj), request=request)
            for obj, _changed_fields in formset.changed_objects:
                record(
                    AuditAction.OBJECT_UPDATED, actor=request.user, obj=obj, before=snapshot(stored[obj.pk]),
                    after=snapshot(obj), request=request,
                )
            for target, before in doomed:
                record(AuditAction.OBJECT_DELETED, actor=request.user, obj=target, before=before, request=request)


class AuditedPasswordChangeMixin:
    """Record a password set through django.contrib.auth's UserAdmin password form, without the password.

    UserAdmin saves that form itself and never calls save_model, so
    AuditedModelAdminMixin does not see it. Put this mixin before it.
    """

    def user_change_password(self, request, id, form_url=""):
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            # The view redirects after it saved a valid form and renders the form again otherwise.
            if request.method == "POST" and response.status_code == 302:
                user = self.get_object(request, id)
                record(
                    AuditAction.OBJECT_UPDATED, actor=request.user, obj=user,
                    changes={"password": [REDACTED, REDACTED]}, detail={"event": "password_changed"},
                    request=request,
                )
        return response


class AuditedPasswordFormViewMixin:
    """Record a password changed on django.contrib.auth's password change or reset confirm page, without the password.

    Put it before the view: ``class PasswordChangeView(AuditedPasswordFormViewMixin, auth_views.PasswordChangeView)``.
    The reset confirm page is served to a logged-out user, so the actor is the user the reset link was sent to.
    """

    audit_event = "password_changed"

    def form_valid(self, form):
        with transaction.atomic():
            response = super().form_valid(form)
            user = form.user
            actor = self.request.user if self.request.user.is_authenticated else user
            record(
                AuditAction.OBJECT_UPDATED, actor=actor, obj=user, changes={"password": [REDACTED, REDACTED]},
                detail={"event": self.audit_event}, request=self.request,
            )
        return response
