"""The TOTP step of a browser login, for users whose role the tenant's policy names.

django-otp stores and verifies the devices; these views enrol a user's first
device and check a code after the password login. The REST API keeps JWT and
API keys and is not asked for a code.
"""

import logging
from base64 import b32encode

import django_otp
import qrcode
import qrcode.image.svg
from django.contrib.auth.decorators import login_required
from django.db import connection, transaction
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django_otp.forms import OTPTokenForm
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.audit.choices import AuditAction, Outcome
from apps.audit.services import record

logger = logging.getLogger(__name__)

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
        # A wrong code is a failed login, so repeated guesses count towards the failed-login burst alarm.
        username = request.user.get_username()
        record(
            AuditAction.LOGIN_FAILED, actor=request.user, obj=request.user, outcome=Outcome.FAILURE,
            detail={"username": username, "factor": "totp"}, request=request,
        )
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
