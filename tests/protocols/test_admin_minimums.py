"""Admin forms of the protocols app report one minimum for every value below it."""

import pytest

from apps.protocols.models import PollGroup


def _interval_errors(alpha_client, interval):
    response = alpha_client.post(
        "/admin/protocols/pollgroup/add/", {"name": f"group {interval}", "interval": interval, "enabled": "on"}
    )
    assert response.status_code == 200, "the form was accepted"
    return response.context["adminform"].form.errors["interval"]


@pytest.mark.parametrize("interval", ["-5", "0"])
def test_poll_group_interval_below_one_reports_one(alpha_client, interval):
    errors = _interval_errors(alpha_client, interval)

    assert errors == ["Ensure this value is greater than or equal to 1."]
    assert not PollGroup.objects.filter(name=f"group {interval}").exists()


def test_poll_group_interval_of_one_is_accepted(alpha_client):
    response = alpha_client.post("/admin/protocols/pollgroup/add/", {"name": "fast", "interval": "1", "enabled": "on"})

    assert response.status_code == 302
    assert PollGroup.objects.get(name="fast").interval == 1
