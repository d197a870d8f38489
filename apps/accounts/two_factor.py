"""The TOTP step of a login, for users whose role the tenant's policy names.

django-otp stores and verifies the devices. The views enrol a user's first
device and check a code after the password login in the browser, and
check_api_code() checks the ``otp_token`` of a JWT request at
``POST /api/v1/auth/token/``. API keys are not asked for a code.
"""

import logging
import math
from base64 import b32encode

import django_otp
import qrcode
import qrcode.image.svg
from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth.decorators import login_required
from django.db import connection, transaction
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django_otp.forms import OTPTokenForm
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework import exceptions

from apps.audit.choices import AuditAction, Outcome
from apps.audit.services import record

logger = logging.getLogger(__name__)

CODE_REQUIRED = (
    "A two-factor code is required for your role; send the current 6-digit code of your authenticator app in otp_token."
)
CODE_INVALID = "The two-factor code is invalid or was already used; send the current 6-digit code in otp_token."
CODE_THROTTLED = "Too many invalid two-factor codes; wait {seconds} s, then send the current code in otp_token."
NOT_ENROLLED = (
    "Your role requires two-factor authentication; enrol two-factor in the web UI first, then request a token."
)
SETUP_ERROR = "The code does not match; check the time on your phone and enter the current 6-digit code."


def _next_url(request):
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return reverse("dashboards:live")


def totp_issuer(device):
    """Return the issuer that authenticator apps show for ``device``: "ThermaCore" and the tenant's name.

    Every tenant has an "admin", so without the tenant's name all their entries would look alike.
    Set as OTP_TOTP_ISSUER, so django-otp also writes it into the label ("ThermaCore Acme:admin").
    """
    tenant_name = getattr(getattr(connection, "tenant", None), "name", "")
    return f"ThermaCore {tenant_name}".strip()


def qr_code_svg(data):
    """Return ``data`` as a QR code in an inline SVG element, which needs no image source or style in the CSP.

    The SVG holds only path data, never ``data`` as text, so marking it safe injects nothing.
    """
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, border=4)
    svg = image.to_string(encoding="unicode")
    return mark_safe(svg.replace("<svg ", '<svg class="totp-qr" role="img" aria-label="QR code of the key" ', 1))


def second_factor_required(user):
    """Return whether the current tenant's policy requires a TOTP code from ``user``'s role."""
    # Outside a tenant request, e.g. in a management command, the connection has no tenant and no policy applies.
    roles = getattr(getattr(connection, "tenant", None), "two_factor_roles", None) or ()
    return getattr(user, "role", None) in roles


def record_failed_code(user, request):
    """Audit a missing or wrong TOTP code as a failed login, so it counts towards the failed-login burst alarm."""
    record(
        AuditAction.LOGIN_FAILED, actor=user, obj=user, outcome=Outcome.FAILURE,
        detail={"username": user.get_username(), "factor": "totp"}, request=request,
    )


def check_api_code(user, code, request):
    """Verify ``code`` against the user's confirmed TOTP devices and return the device that accepted it.

    Raise PermissionDenied when the user has no confirmed device, and
    AuthenticationFailed when the code is missing, wrong, already used or
    throttled by django-otp. A missing or failed code is audited and counted
    by django-axes like a wrong password, so it also leads to the lockout.
    """
    devices = list(TOTPDevice.objects.devices_for_user(user, confirmed=True))
    if not devices:
        logger.info("Schema %s: token for user %s rejected, no confirmed TOTP device", connection.schema_name, user.pk)
        raise exceptions.PermissionDenied(NOT_ENROLLED, code="two_factor_not_enrolled")

    code = (code or "").strip()
    # Read before verifying, because every wrong code starts a new delay.
    wait = _throttle_seconds(devices)
    if code and not wait:
        # verify_token() rejects a code whose time step was already used and applies django-otp's throttling.
        for device in devices:
            if device.verify_token(code):
                logger.info("Schema %s: user %s passed the TOTP step for a token with device %s",
                            connection.schema_name, user.pk, device.pk)
                return device

    record_failed_code(user, request)
    AxesProxyHandler.user_login_failed(sender=__name__, credentials={"username": user.get_username()}, request=request)
    logger.info("Schema %s: token for user %s rejected, TOTP code %s", connection.schema_name, user.pk,
                "invalid" if code else "missing")
    if not code:
        raise exceptions.AuthenticationFailed(CODE_REQUIRED, code="two_factor_code_required")
    if wait:
        raise exceptions.AuthenticationFailed(CODE_THROTTLED.format(seconds=wait), code="two_factor_code_invalid")
    raise exceptions.AuthenticationFailed(CODE_INVALID, code="two_factor_code_invalid")


def _throttle_seconds(devices):
    """Return the seconds until django-otp lets one of ``devices`` verify a code again, 0 when one may now."""
    waits = []
    for device in devices:
        allowed, info = device.verify_is_allowed()
        if allowed:
            return 0
        locked_until = (info or {}).get("locked_until")
        if locked_until is not None:
            waits.append(max(1, math.ceil((locked_until - timezone.now()).total_seconds())))
    return min(waits, default=0)


@login_required
def verify(request):
    """Ask for the current code of the user's TOTP device and mark the session as verified."""
    if not TOTPDevice.objects.devices_for_user(request.user, confirmed=True).exists():
        return redirect(f"{reverse('two_factor_setup')}?next={_next_url(request)}")
    form = OTPTokenForm(request.user, request, data=request.POST or None)
    if request.method == "POST" and form.is_valid():
        django_otp.login(request, request.user.otp_device)
        logger.info("Schema %s: user %s passed the TOTP step", connection.schema_name, request.user.pk)
        return redirect(_next_url(request))
    if request.method == "POST":
        record_failed_code(request.user, request)
        logger.info("Schema %s: user %s entered a wrong TOTP code", connection.schema_name, request.user.pk)
    return render(request, "accounts/two_factor_verify.html", {"form": form, "next": _next_url(request)})


@login_required
def setup(request):
    """Enrol the user's first TOTP device: show its secret as a QR code and as text, then confirm it with one code."""
    if TOTPDevice.objects.devices_for_user(request.user, confirmed=True).exists():
        return redirect(f"{reverse('two_factor_verify')}?next={_next_url(request)}")
    device, _created = TOTPDevice.objects.get_or_create(
        user=request.user, confirmed=False, defaults={"name": "Authenticator app"}
    )
    error = ""
    if request.method == "POST":
        if device.verify_token(request.POST.get("otp_token", "").strip()):
            with transaction.atomic():
                device.confirmed = True
                device.save(update_fields=["confirmed"])
                record(
                    AuditAction.OBJECT_CREATED, actor=request.user, obj=device,
                    detail={"event": "two_factor_enrolled", "user": request.user.get_username(),
                            "device": device.name},
                    request=request,
                )
            django_otp.login(request, device)
            logger.info("Schema %s: user %s enrolled TOTP device %s", connection.schema_name, request.user.pk, device.pk)
            return redirect(_next_url(request))
        error = SETUP_ERROR
    context = {
        "secret": b32encode(device.bin_key).decode(),
        "config_url": device.config_url,
        "qr_code": qr_code_svg(device.config_url),
        "error": error,
        "next": _next_url(request),
    }
    return render(request, "accounts/two_factor_setup.html", context)
