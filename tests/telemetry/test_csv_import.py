import io
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from apps.accounts.choices import Role
from apps.audit.choices import AuditAction
from apps.audit.models import AuditEntry
from apps.sensors.quality import Quality
from apps.telemetry.csv_import import MAX_LISTED_REJECTIONS, CsvImportError, import_readings
from apps.telemetry.models import Reading
from tests.conftest import TENANT_DOMAINS, access_token_for
from tests.factories import SensorFactory, SiteFactory, UnitFactory

URL = "/api/v1/ingest/csv/"


@pytest.fixture
def berlin_sensor(alpha):
    unit = UnitFactory(site=SiteFactory(time_zone="Europe/Berlin"))
    return SensorFactory(unit=unit, minimum=0, maximum=200)


@pytest.fixture
def utc_sensor(alpha):
    return SensorFactory(minimum=0, maximum=200)


def run_import(text, **options):
    from apps.audit.services import Actor

    return import_readings(
        "alpha", io.StringIO(text), actor=Actor.system_job("tests.csv"), source="test.csv", **options
    )


def stored(sensor):
    return list(Reading.objects.filter(sensor=sensor).order_by("time").values_list("time", "value", "quality"))


def reasons(report):
    return {rejection.line: rejection.reason for rejection in report.rejections}


def test_import_honours_offsets(berlin_sensor):
    text = (
        "time,sensor,value\n"
        f"2026-01-05T10:00:00+03:00,{berlin_sensor.id},1.5\n"
        f"2026-01-05T10:00:00Z,{berlin_sensor.id},2.5\n"
        f"1767607260,{berlin_sensor.id},3.5\n"
    )

    report = run_import(text)

    assert report.accepted == 3
    assert report.rejected == 0
    assert stored(berlin_sensor) == [
        (datetime(2026, 1, 5, 7, 0, tzinfo=UTC), 1.5, Quality.GOOD),
        (datetime(2026, 1, 5, 10, 0, tzinfo=UTC), 2.5, Quality.GOOD),
        (datetime(2026, 1, 5, 10, 1, tzinfo=UTC), 3.5, Quality.GOOD),
    ]


def test_import_converts_local_times_of_dst_site(berlin_sensor):
    text = (
        "time,sensor,value,quality\n"
        f"2026-01-05 10:00:00,{berlin_sensor.id},1,\n"
        f"2026-07-05T10:00:00,{berlin_sensor.id},2,64\n"
    )

    report = run_import(text)

    assert report.accepted == 2
    assert stored(berlin_sensor) == [
        (datetime(2026, 1, 5, 9, 0, tzinfo=UTC), 1.0, Quality.GOOD),
        (datetime(2026, 7, 5, 8, 0, tzinfo=UTC), 2.0, 64),
    ]


def test_import_rejects_ambiguous_and_gap_times(berlin_sensor):
    text = (
        "time,sensor,value\n"
        f"2026-10-25T02:30:00,{berlin_sensor.id},1\n"
        f"2026-03-29T02:30:00,{berlin_sensor.id},2\n"
        f"2026-10-25T03:30:00,{berlin_sensor.id},3\n"
    )

    report = run_import(text)

    assert report.accepted == 1
    assert report.rejected == 2
    assert "ambiguous in Europe/Berlin" in reasons(report)[2]
    assert "fold" in reasons(report)[2]
    assert "does not exist in Europe/Berlin" in reasons(report)[3]
    assert stored(berlin_sensor) == [(datetime(2026, 10, 25, 2, 30, tzinfo=UTC), 3.0, Quality.GOOD)]


def test_import_fold_column_resolves_ambiguity(berlin_sensor):
    text = (
        "time,sensor,value,fold\n"
        f"2026-10-25T02:30:00,{berlin_sensor.id},1,0\n"
        f"2026-10-25T02:30:00,{berlin_sensor.id},2,1\n"
        f"2026-10-25T02:40:00,{berlin_sensor.id},3,2\n"
    )

    report = run_import(text)

    assert report.accepted == 2
    assert "Fold '2' is invalid" in reasons(report)[4]
    assert stored(berlin_sensor) == [
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), 1.0, Quality.GOOD),
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), 2.0, Quality.GOOD),
    ]


def test_import_counts_duplicates(utc_sensor):
    text = f"time,sensor,value\n2026-01-05T10:00:00Z,{utc_sensor.id},1\n2026-01-05T10:00:00Z,{utc_sensor.id},9\n"

    first = run_import(text)
    second = run_import(text)

    assert first.accepted == 1
    assert first.duplicates == 1
    assert second.accepted == 0
    assert second.duplicates == 2
    assert stored(utc_sensor) == [(datetime(2026, 1, 5, 10, 0, tzinfo=UTC), 1.0, Quality.GOOD)]


def test_import_reports_bad_lines_and_keeps_good(utc_sensor):
    text = (
        "time,sensor,value\n"
        f"2026-01-05T10:00:00Z,{utc_sensor.id},1\n"
        f"2026-01-05T10:00:10Z,{utc_sensor.id},warm\n"
        "2026-01-05T10:00:20Z,999999,3\n"
        "2026-01-05T10:00:30Z,abc,4\n"
        f"2026-01-05T10:00:40Z,{utc_sensor.id},5,extra\n"
        f"yesterday,{utc_sensor.id},6\n"
        "\n"
        f"2026-01-05T10:00:50Z,{utc_sensor.id},7\n"
    )

    report = run_import(text, chunk_size=2)

    found = reasons(report)
    assert report.accepted == 2
    assert report.rejected == 5
    assert "Value 'warm' is not a number" in found[3]
    assert "Sensor 999999 does not exist" in found[4]
    assert "Sensor 'abc' is not a sensor id" in found[5]
    assert "4 fields but the header has 3 columns" in found[6]
    assert "'yesterday'" in found[7]
    assert [value for _time, value, _quality in stored(utc_sensor)] == [1.0, 7.0]


def test_import_rejects_unknown_column_before_storing(utc_sensor):
    with pytest.raises(CsvImportError) as raised:
        run_import(f"time,sensor,value,unit\n2026-01-05T10:00:00Z,{utc_sensor.id},1,degC\n")

    assert "unknown column unit" in str(raised.value)
    assert stored(utc_sensor) == []


def test_import_wide_layout(berlin_sensor, utc_sensor):
    text = (
        f"time,{berlin_sensor.id},{utc_sensor.id}\n"
        "2026-01-05T10:00:00,1,2\n"
        "2026-01-05T10:01:00,,4\n"
        "2026-01-05T10:02:00,x,6\n"
    )

    report = run_import(text)

    assert report.layout == "wide"
    assert report.accepted == 4
    assert "Value 'x' is not a number" in reasons(report)[4]
    assert stored(berlin_sensor) == [(datetime(2026, 1, 5, 9, 0, tzinfo=UTC), 1.0, Quality.GOOD)]
    assert [time.minute for time, _value, _quality in stored(utc_sensor)] == [0, 1, 2]


def test_import_caps_listed_rejections(utc_sensor):
    rows = "".join(f"2026-01-05T10:00:00Z,{utc_sensor.id},bad\n" for _ in range(MAX_LISTED_REJECTIONS + 5))

    report = run_import("time,sensor,value\n" + rows)

    assert report.rejected == MAX_LISTED_REJECTIONS + 5
    assert len(report.rejections) == MAX_LISTED_REJECTIONS
    assert report.unlisted_rejections == 5


def test_import_dry_run_stores_nothing(utc_sensor):
    text = f"time,sensor,value\n2026-01-05T10:00:00Z,{utc_sensor.id},1\n"

    report = run_import(text, dry_run=True)

    assert report.accepted == 1
    assert stored(utc_sensor) == []
    assert not AuditEntry.objects.filter(action=AuditAction.OBJECTS_IMPORTED).exists()


def test_command_imports_large_file_in_chunks(utc_sensor, tmp_path):
    start = datetime(2026, 1, 5, tzinfo=UTC)
    path = tmp_path / "history.csv"
    with path.open("w") as handle:
        handle.write("time,sensor,value\n")
        for second in range(20_000):
            handle.write(f"{(start + timedelta(seconds=second)).isoformat()},{utc_sensor.id},{second % 100}\n")
    output = io.StringIO()

    call_command("import_readings", str(path), schema="alpha", stdout=output)

    assert "20000 lines (long layout) in 4 chunks: 20000 readings stored" in output.getvalue()
    assert Reading.objects.filter(sensor=utc_sensor).count() == 20_000
    entry = AuditEntry.objects.filter(action=AuditAction.OBJECTS_IMPORTED).latest("sequence")
    assert entry.detail["accepted"] == 20_000
    assert entry.detail["source"] == "history.csv"


def test_command_unknown_schema_fails(alpha, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("time,sensor,value\n")

    with pytest.raises(CommandError) as raised:
        call_command("import_readings", str(path), schema="nosuch")

    assert "'nosuch' not found" in str(raised.value)


def test_api_imports_csv_body(alpha_api, berlin_sensor):
    body = f"time,sensor,value\n2026-01-05T10:00:00,{berlin_sensor.id},1\n2026-01-05T10:00:10,{berlin_sensor.id},x\n"

    response = alpha_api.post(URL, body, content_type="text/csv")

    assert response.status_code == 200
    assert response.data["accepted"] == 1
    assert response.data["rejected"] == 1
    assert response.data["rejections"][0]["line"] == 3
    assert stored(berlin_sensor) == [(datetime(2026, 1, 5, 9, 0, tzinfo=UTC), 1.0, Quality.GOOD)]
    entry = AuditEntry.objects.filter(action=AuditAction.OBJECTS_IMPORTED).latest("sequence")
    assert entry.actor_name == "admin"


def test_api_imports_multipart_file(alpha_api, utc_sensor):
    upload = SimpleUploadedFile("readings.csv", f"time,sensor,value\n2026-01-05T10:00:00Z,{utc_sensor.id},1\n".encode())

    response = alpha_api.post(URL, {"file": upload}, format="multipart")

    assert response.status_code == 200
    assert response.data["accepted"] == 1
    assert AuditEntry.objects.filter(action=AuditAction.OBJECTS_IMPORTED).latest("sequence").detail["source"] == (
        "readings.csv"
    )


def test_api_bad_header_is_400(alpha_api, utc_sensor):
    response = alpha_api.post(URL, "when,what\n1,2\n", content_type="text/csv")

    assert response.status_code == 400
    assert "no time column" in str(response.data)


def test_api_viewer_is_denied(alpha, utc_sensor):
    viewer = get_user_model().objects.create_user("csv-viewer", password="Viewer-pass-4711", role=Role.VIEWER)
    client = APIClient(HTTP_HOST=TENANT_DOMAINS["alpha"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token_for('alpha', viewer)}")

    response = client.post(URL, f"time,sensor,value\n2026-01-05T10:00:00Z,{utc_sensor.id},1\n", content_type="text/csv")

    assert response.status_code == 403
    assert stored(utc_sensor) == []


@pytest.mark.parametrize("column", ["²", "9" * 5000, "١٢"])
def test_import_rejects_non_ascii_or_huge_id_column(utc_sensor, column):
    with pytest.raises(CsvImportError) as raised:
        run_import(f"time,{column}\n2026-01-06T10:00:00Z,1\n")

    assert "Header line 1 has unknown column" in str(raised.value)
    assert len(str(raised.value)) < 400
    assert stored(utc_sensor) == []


@pytest.mark.parametrize("when", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-10:00", "0001-01-01T00:00:00"])
def test_import_rejects_time_outside_utc_range(berlin_sensor, when):
    report = run_import(
        "time,sensor,value\n"
        f"{when},{berlin_sensor.id},1\n"
        f"2026-01-05T10:00:00Z,{berlin_sensor.id},2\n"
    )

    assert list(reasons(report)) == [2]
    assert f"{when!r} is out of range in UTC; send a time between the years 1 and 9999." in reasons(report)[2]
    assert report.accepted == 1
    assert report.error == ""


@pytest.mark.parametrize("raw", ["²", "1" * 30, "-3"])
def test_import_rejects_odd_sensor_and_quality(utc_sensor, raw):
    report = run_import(
        "time,sensor,value,quality\n"
        f"2026-01-05T10:00:00Z,{raw},1,0\n"
        f"2026-01-05T10:00:10Z,{utc_sensor.id},1,{raw}\n"
        f"2026-01-05T10:00:20Z,{utc_sensor.id},2,0\n"
    )

    assert set(reasons(report)) == {2, 3}
    assert "is not a sensor id" in reasons(report)[2]
    assert "is not a quality code" in reasons(report)[3]
    assert report.accepted == 1


def test_import_names_line_of_oversized_field(utc_sensor):
    report = run_import(
        "time,sensor,value\n"
        f"2026-01-05T10:00:00Z,{utc_sensor.id},1\n"
        f"2026-01-05T10:00:10Z,{utc_sensor.id},\"{'9' * 200_000}\"\n"
        f"2026-01-05T10:00:20Z,{utc_sensor.id},2\n"
    )

    assert report.error.startswith("Line 3 cannot be read (field larger than field limit")
    assert report.accepted == 1
