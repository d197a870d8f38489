"""The TOTP enrolment page shows the key as an inline SVG QR code and as text."""

import html
import re
from base64 import b32encode

import qrcode
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts.choices import Role
from apps.accounts.two_factor import qr_code_svg

# SvgPathImage draws each dark module as "M<x>,<y>H<x+1>V<y+1>H<x>z" in module units.
MODULE = re.compile(r"M(\d+),(\d+)H")


def dark_modules(svg):
    return {(int(x), int(y)) for x, y in MODULE.findall(svg)}


def expected_modules(data):
    code = qrcode.QRCode(border=4)
    code.add_data(data)
    return {(x, y) for y, row in enumerate(code.get_matrix()) for x, dark in enumerate(row) if dark}


def test_setup_page_shows_qr_code_and_key(browser_as, user_of_role):
    browser = browser_as(Role.OPERATOR)

    page = browser.get("/accounts/two-factor/setup/")

    device = TOTPDevice.objects.get(user=user_of_role("operator"))
    svg = re.search(r"<svg\b.*?</svg>", page.text, re.DOTALL)
    assert page.status_code == 200
    assert svg is not None
    assert 'role="img"' in svg.group(0)
    assert dark_modules(svg.group(0)) == expected_modules(device.config_url)
    assert f"<code>{b32encode(device.bin_key).decode()}</code>" in page.text
    assert html.escape(device.config_url) in page.text


def test_qr_code_needs_no_inline_style():
    svg = qr_code_svg("otpauth://totp/alpha:operator?secret=JBSWY3DPEHPK3PXP")

    assert svg.startswith("<svg ")
    assert "style" not in svg
    assert "<?xml" not in svg
    assert "otpauth" not in svg


def test_qr_code_differs_per_key():
    first = dark_modules(qr_code_svg("otpauth://totp/alpha:operator?secret=JBSWY3DPEHPK3PXP"))
    second = dark_modules(qr_code_svg("otpauth://totp/alpha:operator?secret=KRSXG5CTMVRXEZLU"))

    assert first != second
