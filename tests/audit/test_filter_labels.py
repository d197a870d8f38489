"""Every filter of the audit page has a readable label."""

from apps.audit.filters import AuditEntryFilter


def test_audit_page_filters_have_labels(alpha_client):
    response = alpha_client.get("/audit/")

    text = response.content.decode()
    assert response.status_code == 200
    assert "[invalid name]" not in text
    assert "Security alarm trigger" in text


def test_filterset_labels_are_valid():
    form = AuditEntryFilter().form

    labels = {name: str(field.label) for name, field in form.fields.items()}

    assert all("[invalid name]" not in label for label in labels.values()), labels
