"""Import of historical readings from CSV files into the one ingest pipeline.

Two layouts are read, both with a header row:

* long: columns ``time``, ``sensor`` (id) and ``value``, optional ``quality``
  and ``fold``, one reading per line;
* wide: ``time``, optional ``fold``, then one column per sensor id, one
  reading per non-empty cell.

A time with an offset (or an epoch number) is honoured. A time without one is
a wall-clock time of the site of the sensor's unit (``Site.time_zone``). An
ambiguous wall-clock time (the repeated hour when DST ends) is rejected
unless a ``fold`` column states which (0 the first, 1 the second), and a
wall-clock time that does not exist (the hour skipped when DST starts) is
rejected. The file is read as a stream and handed to ``ingest`` in chunks,
so every chunk that was ingested stays stored when a later line is bad.
"""

import csv
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from django.db import transaction
from django_tenants.utils import schema_context

from apps.audit import services as audit
from apps.audit.choices import AuditAction, Outcome
from apps.audit.services import AuditTarget
from apps.sensors.models import Sensor
from apps.sensors.quality import Quality
from apps.sensors.samples import Sample
from apps.sensors.timestamps import parse_timestamp, to_utc

from .batches import MAX_QUALITY
from .ingest import ingest

logger = logging.getLogger(__name__)
# Sensor ids (bigint) and quality codes, in ASCII digits, short enough that int() never hits its digit limit.
ID_PATTERN = re.compile(r"[0-9]{1,18}")
QUALITY_PATTERN = re.compile(r"[0-9]{1,5}")

CHUNK_SIZE = 5_000
MAX_LISTED_REJECTIONS = 100
LONG_COLUMNS = frozenset({"time", "sensor", "value", "quality", "fold"})


class CsvImportError(ValueError):
    """A file that cannot be imported at all, such as a missing or invalid header."""


@dataclass
class LineRejection:
    line: int
    sensor: object
    reason: str


@dataclass
class ImportReport:
    """Counts of one import, with the first MAX_LISTED_REJECTIONS rejected readings in ``rejections``.

    ``error`` is set when reading stopped early at an unreadable line, and
    the lines before it are stored.
    """

    layout: str = ""
    lines: int = 0
    chunks: int = 0
    accepted: int = 0
    spooled: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[LineRejection] = field(default_factory=list)
    error: str = ""
    dry_run: bool = False

    def reject(self, line, sensor, reason):
        self.rejected += 1
        if len(self.rejections) < MAX_LISTED_REJECTIONS:
            self.rejections.append(LineRejection(line, sensor, reason))

    @property
    def unlisted_rejections(self):
        return self.rejected - len(self.rejections)

    def as_dict(self):
        return {
            "layout": self.layout,
            "lines": self.lines,
            "chunks": self.chunks,
            "accepted": self.accepted,
            "spooled": self.spooled,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejections": [
                {"line": rejection.line, "sensor": rejection.sensor, "reason": rejection.reason}
                for rejection in self.rejections
            ],
            "unlisted_rejections": self.unlisted_rejections,
            "error": self.error,
            "dry_run": self.dry_run,
        }


def import_readings(
    schema, text, *, actor, source, request=None, dry_run=False, chunk_size=CHUNK_SIZE, progress=None,
    audit_detail=None,
):
    """Import the CSV text stream ``text`` into the readings of tenant ``schema`` and return an ImportReport.

    ``text`` is an iterable of lines, such as a file opened with
    ``newline=""``. Raises CsvImportError when the header is missing or
    invalid, before anything is stored. An import that processed any reading gets
    one audit entry by ``actor`` naming ``source`` (a file name), also when
    it fails halfway. With ``dry_run`` every chunk is ingested inside a
    transaction that is rolled back, so the counts include duplicates against
    stored history, but nothing is kept or audited.

    ``progress`` is called with the report after each chunk was handed to
    ingest. An exception it raises stops the import, and the earlier chunks
    stay stored. ``audit_detail`` adds keys to the audit entry's detail.
    """
    report = ImportReport(dry_run=dry_run)
    reader = csv.reader(text)
    with schema_context(schema):
        header = _read_header(reader)
        layout = _Layout.from_header(header)
        report.layout = layout.name
        logger.info(
            "CSV import of %r into schema %s started (%s layout%s)",
            source,
            schema,
            layout.name,
            ", dry run" if dry_run else "",
        )
        completed = False
        try:
            _import_rows(schema, reader, layout, report, dry_run, chunk_size, progress)
            completed = True
        finally:
            if not dry_run and (report.accepted or report.spooled or report.duplicates or report.rejected):
                _audit(report, actor=actor, source=source, request=request, completed=completed, extra=audit_detail)
    logger.info(
        "CSV import into schema %s%s: %d lines, %d chunks, %d accepted, %d spooled, %d duplicates, %d rejected",
        schema,
        " (dry run)" if dry_run else "",
        report.lines,
        report.chunks,
        report.accepted,
        report.spooled,
        report.duplicates,
        report.rejected,
    )
    return report


def decoded_lines(binary_lines):
    """Yield the lines of UTF-8 bytes as text one by one, so that a decoding error belongs to its own line.

    A text file decodes blocks of 8 KiB, and an error in a block stops the reader before the block's earlier lines.
    """
    for number, line in enumerate(binary_lines):
        yield line.decode("utf-8-sig" if number == 0 else "utf-8")


def _import_rows(schema, reader, layout, report, dry_run, chunk_size, progress):
    zones = _SiteZones()
    chunk = _Chunk()
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            report.lines += 1
            layout.parse_row(row, line, zones, chunk, report)
            if len(chunk.samples) >= chunk_size:
                _ingest_chunk(schema, chunk, report, dry_run)
                chunk = _Chunk()
                if progress is not None:
                    progress(report)
    except (csv.Error, UnicodeDecodeError) as exc:
        # The reader counts a line it could not parse, but not one that failed to decode.
        line = reader.line_num + (1 if isinstance(exc, UnicodeDecodeError) else 0)
        report.error = f"Line {line} cannot be read ({exc}); fix the file and import from that line on."
        logger.warning("CSV import into schema %s stopped: %s", schema, report.error)
    # The lines read before an unreadable one are still stored.
    _ingest_chunk(schema, chunk, report, dry_run)
    if progress is not None:
        progress(report)


def _audit(report, *, actor, source, request, completed, extra=None):
    detail = {key: value for key, value in report.as_dict().items() if key not in ("rejections", "dry_run")}
    detail["source"] = source
    detail.update(extra or {})
    audit.record(
        AuditAction.OBJECTS_IMPORTED,
        actor=actor,
        obj=AuditTarget("telemetry.reading", "", f"CSV {source}"[:200]),
        outcome=Outcome.SUCCESS if completed and not report.error else Outcome.FAILURE,
        detail=detail,
        request=request,
    )


def _read_header(reader):
    try:
        for row in reader:
            names = [cell.strip().lower() for cell in row]
            if any(names):
                return names
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CsvImportError(f"The header row cannot be read ({exc}); send UTF-8 CSV with a header row.") from None
    raise CsvImportError("The file is empty; send a header row such as time,sensor,value and one reading per line.")


@dataclass
class _Chunk:
    samples: list = field(default_factory=list)
    lines: list = field(default_factory=list)


def _ingest_chunk(schema, chunk, report, dry_run):
    if not chunk.samples:
        return
    if dry_run:
        with transaction.atomic():
            result = ingest(schema, chunk.samples)
            transaction.set_rollback(True)
    else:
        result = ingest(schema, chunk.samples)
    report.chunks += 1
    report.accepted += result.accepted
    report.spooled += result.spooled
    report.duplicates += result.duplicates
    for rejection in result.rejected:
        report.reject(chunk.lines[rejection.index], rejection.sensor_id, rejection.reason)


class _Layout:
    """Column positions of a header, and the parsing of one data row into samples."""

    def __init__(self, name, header, sensor_columns):
        self.name = name
        self.width = len(header)
        self.time = header.index("time")
        self.fold = header.index("fold") if "fold" in header else None
        self.sensor = header.index("sensor") if "sensor" in header else None
        self.value = header.index("value") if "value" in header else None
        self.quality = header.index("quality") if "quality" in header else None
        self.sensor_columns = sensor_columns

    @classmethod
    def from_header(cls, header):
        duplicated = sorted({name for name in header if header.count(name) > 1})
        if duplicated:
            raise CsvImportError(f"Header line 1 repeats column {', '.join(duplicated)}; name each column once.")
        if "time" not in header:
            raise CsvImportError(f"Header line 1 ({','.join(header)}) has no time column; start it with time.")
        if "sensor" in header or "value" in header:
            unknown = [name for name in header if name not in LONG_COLUMNS]
            if unknown:
                raise CsvImportError(
                    f"Header line 1 has unknown column {', '.join(unknown)}; "
                    "a long file has only time, sensor, value, quality and fold."
                )
            missing = [name for name in ("sensor", "value") if name not in header]
            if missing:
                raise CsvImportError(f"Header line 1 is missing column {', '.join(missing)}; send time,sensor,value.")
            return cls("long", header, [])

        sensor_columns = []
        for position, name in enumerate(header):
            if name in ("time", "fold"):
                continue
            if _positive_id(name) is None:
                raise CsvImportError(
                    f"Header line 1 has unknown column {name[:40]!r}; a wide file has time, optional fold, "
                    "and one column per sensor id, or use the long layout time,sensor,value."
                )
            sensor_columns.append((position, int(name)))
        if not sensor_columns:
            raise CsvImportError("Header line 1 names no sensor; add sensor id columns, or sensor and value.")
        return cls("wide", header, sensor_columns)

    def parse_row(self, row, line, zones, chunk, report):
        if len(row) != self.width:
            report.reject(
                line,
                None,
                f"Line has {len(row)} fields but the header has {self.width} columns; "
                "quote values that contain commas.",
            )
            return
        if self.name == "long":
            self._parse_long(row, line, zones, chunk, report)
        else:
            self._parse_wide(row, line, zones, chunk, report)

    def _parse_long(self, row, line, zones, chunk, report):
        raw_sensor = row[self.sensor].strip()
        try:
            sensor = _parse_sensor(raw_sensor)
            fold = self._parse_fold(row)
            when = _parse_time(row[self.time], fold, zones.get(sensor), sensor)
            value = _parse_value(row[self.value])
            quality = _parse_quality(row[self.quality]) if self.quality is not None else int(Quality.GOOD)
        except ValueError as exc:
            report.reject(line, raw_sensor, str(exc))
            return
        chunk.samples.append(Sample(sensor, when, value, quality))
        chunk.lines.append(line)

    def _parse_wide(self, row, line, zones, chunk, report):
        try:
            fold = self._parse_fold(row)
        except ValueError as exc:
            report.reject(line, None, str(exc))
            return
        for position, sensor in self.sensor_columns:
            cell = row[position]
            if not cell.strip():
                continue
            try:
                when = _parse_time(row[self.time], fold, zones.get(sensor), sensor)
                value = _parse_value(cell)
            except ValueError as exc:
                report.reject(line, sensor, str(exc))
                continue
            chunk.samples.append(Sample(sensor, when, value, int(Quality.GOOD)))
            chunk.lines.append(line)

    def _parse_fold(self, row):
        if self.fold is None:
            return None
        raw = row[self.fold].strip()
        if raw == "":
            return None
        if raw not in ("0", "1"):
            raise ValueError(f"Fold {raw!r} is invalid; send 0 for the first or 1 for the second of a repeated hour.")
        return int(raw)


class _SiteZones:
    """Time zone of each sensor's site, read once per sensor for the whole import."""

    def __init__(self):
        self.zones = {}
        self.by_name = {}

    def get(self, sensor_id):
        if sensor_id not in self.zones:
            name = Sensor.objects.filter(pk=sensor_id).values_list("unit__site__time_zone", flat=True).first()
            if name is not None and name not in self.by_name:
                self.by_name[name] = ZoneInfo(name)
            self.zones[sensor_id] = self.by_name.get(name)
        return self.zones[sensor_id]


def _positive_id(text):
    """Return ``text`` as a positive id, or None. Only ASCII digits count: str.isdigit() also accepts "²"."""
    if not ID_PATTERN.fullmatch(text) or int(text) <= 0:
        return None
    return int(text)


def _parse_sensor(raw):
    sensor = _positive_id(raw)
    if sensor is None:
        raise ValueError(f"Sensor {raw[:40]!r} is not a sensor id; send the positive integer id of the sensor.")
    return sensor


def _parse_value(raw):
    text = raw.strip()
    if text == "":
        raise ValueError("Value is missing; send a number, or leave the line out.")
    try:
        # A non-finite value passes through: ingest stores it with bad quality and no value.
        return float(text)
    except ValueError:
        raise ValueError(f"Value {text!r} is not a number; send a decimal number with a point, such as 21.5.") from None


def _parse_quality(raw):
    text = raw.strip()
    if text == "":
        return int(Quality.GOOD)
    if not QUALITY_PATTERN.fullmatch(text) or int(text) > MAX_QUALITY:
        raise ValueError(f"Quality {text[:40]!r} is not a quality code; send an integer from 0 to {MAX_QUALITY}.")
    return int(text)


def _parse_time(raw, fold, zone, sensor):
    """Return the aware UTC time of a cell. A time without an offset is read in ``zone``, the time zone of the site of ``sensor``."""
    text = raw.strip()
    try:
        float(text)
    except ValueError:
        pass
    else:
        return parse_timestamp(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"Time {text!r} is neither ISO 8601 nor an epoch number; use e.g. 2026-01-05T10:00:00 or 2026-01-05T10:00:00Z."
        ) from None
    if parsed.tzinfo is not None:
        return to_utc(parsed, text)
    if zone is None:
        raise ValueError(f"Sensor {sensor!r} does not exist in this tenant, so the time zone of {text!r} is unknown.")
    try:
        return _localize(parsed, fold, zone)
    except OverflowError:
        raise ValueError(
            f"Time {text!r} is out of range in UTC; send a time between the years 1 and 9999."
        ) from None


def _localize(naive, fold, zone):
    earlier = naive.replace(tzinfo=zone, fold=0)
    later = naive.replace(tzinfo=zone, fold=1)
    if earlier.utcoffset() != later.utcoffset():
        # zoneinfo gives the two folds different offsets in a gap too, so only a real time survives the round trip.
        if earlier.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
            raise ValueError(
                f"Time {naive.isoformat()} does not exist in {zone.key}, because clocks skip it when DST starts; "
                "check the time, or send it with its UTC offset."
            )
        if fold is None:
            raise ValueError(
                f"Time {naive.isoformat()} is ambiguous in {zone.key}, because it occurs twice when DST ends; "
                "add a fold column (0 for the first, 1 for the second) or send the time with its UTC offset."
            )
        return (later if fold else earlier).astimezone(UTC)
    return earlier.astimezone(UTC)
