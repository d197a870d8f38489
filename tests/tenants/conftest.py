"""Fixtures that change tenant alpha's quotas and security policy for one test."""

import pytest

from apps.tenants.models import Tenant
from tests.accounts.conftest import api_as, browser_as, user_of_role  # noqa: F401 (fixtures used here)


@pytest.fixture
def alpha_settings(alpha):
    """Return a function that saves the given Tenant fields on alpha; the test transaction undoes them."""

    def change(**fields):
        for name, value in fields.items():
            setattr(alpha, name, value)
        alpha.full_clean()
        alpha.save(update_fields=list(fields))
        return Tenant.objects.get(pk=alpha.pk)

    return change
