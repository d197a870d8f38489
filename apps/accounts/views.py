"""Account endpoints: the login page, token issue and logout, one's own profile and API keys."""

from django.contrib.auth import views as auth_views
from rest_framework import generics, mixins, status, viewsets
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework_simplejwt import views as jwt_views

from apps.audit.mixins import AuditedPasswordFormViewMixin

from .models import ApiKey
from .roles import Capability
from .serializers import ApiKeySerializer, ProfileSerializer
from .services import create_api_key, revoke_api_key, update_profile
from .throttling import AuthenticationRateThrottle, rate_limited_response
from .tokens import check_token_second_factor

LOCKOUT_MESSAGE = (
    "Too many failed logins for this user name from this address; wait for the lockout to expire "
    "or ask a tenant admin to unlock the account."
)


# The tenant's API rate applies as everywhere, plus the per-address authentication rate.
AUTHENTICATION_THROTTLES = [*api_settings.DEFAULT_THROTTLE_CLASSES, AuthenticationRateThrottle]


class LoginView(auth_views.LoginView):
    """Django's login page with the per-address authentication rate on its POSTs."""

    def post(self, request, *args, **kwargs):
        limited = rate_limited_response(request)
        if limited is not None:
            return limited
        return super().post(request, *args, **kwargs)


class TokenObtainPairView(jwt_views.TokenObtainPairView):
    """Issue an access and refresh token pair; failed attempts count towards the login lockout."""

    throttle_classes = AUTHENTICATION_THROTTLES

    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except AuthenticationFailed:
            # django-axes flags the DRF request it was given, not the Django
            # request its middleware checks, so the lockout response is built here.
            if getattr(request, "axes_locked_out", False):
                return Response({"detail": LOCKOUT_MESSAGE}, status=status.HTTP_429_TOO_MANY_REQUESTS)
            raise


class TokenRefreshView(jwt_views.TokenRefreshView):
    """Return a new token pair for a refresh token and blacklist the one given."""

    throttle_classes = AUTHENTICATION_THROTTLES


class LogoutView(jwt_views.TokenBlacklistView):
    """Blacklist the given refresh token, so it can no longer be refreshed, and close the sockets of its login.

    Access tokens issued from it stay valid for REST requests until they
    expire (SIMPLE_JWT ACCESS_TOKEN_LIFETIME, 5 minutes by default), but
    open no new WebSockets (apps.accounts.tokens.end_login).
    """


class ProfileView(generics.RetrieveUpdateAPIView):
    """Show and change one's own name and e-mail address; role and flags cannot be changed here."""

    serializer_class = ProfileSerializer
    any_role_allowed = True
    http_method_names = ["get", "patch", "head", "options"]

    def get_object(self):
        return self.request.user

    def perform_update(self, serializer):
        update_profile(self.request.user, actor=self.request.user, changes=serializer.validated_data)


class ApiKeyViewSet(mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    """List, create and revoke API keys of machine clients; DELETE revokes, the row is kept."""

    queryset = ApiKey.objects.select_related("user", "created_by")
    serializer_class = ApiKeySerializer
    lookup_field = "prefix"
    required_capability = Capability.MANAGE_USERS

    def create(self, request, *args, **kwargs):
        # A key does not expire unless asked to, so it must not come from a login that skipped the required TOTP step.
        check_token_second_factor(request.user, request.auth)
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key, key = create_api_key(
            name=serializer.validated_data["name"],
            role=serializer.validated_data["user"]["role"],
            expiry_date=serializer.validated_data.get("expiry_date"),
            actor=request.user,
        )
        return Response({**ApiKeySerializer(api_key).data, "key": key}, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        revoke_api_key(instance, actor=self.request.user)


class PasswordChangeView(AuditedPasswordFormViewMixin, auth_views.PasswordChangeView):
    """Django's password change page, recorded in the audit trail."""


class PasswordResetConfirmView(AuditedPasswordFormViewMixin, auth_views.PasswordResetConfirmView):
    """Django's page that sets a new password from a reset link, recorded in the audit trail."""

    audit_event = "password_reset"
