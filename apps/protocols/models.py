from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.utils import timezone

from apps.sensors.models import Sensor
from apps.tenants.quotas import QuotaCheckedQuerySet

from .choices import (
    ByteOrder,
    DataType,
    DeviceStatus,
    Dnp3Control,
    Dnp3OperateMode,
    Dnp3PointType,
    MqttQos,
    OpcUaSecurityMode,
    OpcUaSecurityPolicy,
    Protocol,
    RegisterType,
)
from .modbus.codec import register_count
from .mqtt.sparkplug import validate_point_topic as validate_sparkplug_topic
from .mqtt.topics import validate_json_path, validate_topic_filter
from .opcua.nodes import validate_node_id
from .validators import TLS_FILE_FIELDS, resolve_tls_file, validate_host

# Protocols whose devices push values to the gateway instead of being polled.
SUBSCRIPTION_PROTOCOLS = (Protocol.MQTT, Protocol.OPCUA, Protocol.DNP3)

BIT_REGISTER_TYPES = {RegisterType.COIL, RegisterType.DISCRETE}
# Data types of analog output blocks (group 41), as the setpoints of DNP3 analog output status points.
DNP3_ANALOG_OUTPUT_TYPES = {DataType.INT32, DataType.INT16, DataType.FLOAT32}


# Fields whose change makes a device worth polling again at once.
CONNECTION_FIELDS = ("protocol", "host", "port", "unit_id", "timeout", "enabled", "endpoint_path", "username", "password")


class CertificateQuerySet(models.QuerySet):
    def with_private_key(self):
        return self.exclude(private_key_encrypted="")

    def expiring_before(self, moment):
        return self.filter(not_valid_after__lte=moment)


class Certificate(models.Model):
    """An X.509 certificate of the tenant, such as ThermaCore's OPC UA client certificate or a trusted server's.

    A client certificate has its private key, stored encrypted (see apps.protocols.certificates).
    A certificate without a key can only be trusted. Create them with
    ``certificates.generate_certificate`` or ``certificates.import_certificate``.
    """

    name = models.CharField(max_length=200, unique=True)
    certificate_pem = models.TextField(help_text="The certificate in PEM form.")
    private_key_encrypted = models.TextField(
        blank=True, editable=False, help_text="Fernet token of the PEM private key; empty for a trusted certificate."
    )
    subject = models.CharField(max_length=500, editable=False)
    application_uri = models.CharField(
        max_length=500, blank=True, editable=False, help_text="First URI subject alternative name (OPC UA application URI)."
    )
    fingerprint_sha256 = models.CharField(max_length=64, editable=False)
    not_valid_before = models.DateTimeField(editable=False)
    not_valid_after = models.DateTimeField(editable=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = CertificateQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["fingerprint_sha256"], name="protocols_certificate_unique_fingerprint"),
        ]

    def __str__(self):
        return f"{self.name} (until {self.not_valid_after:%Y-%m-%d})"

    @property
    def has_private_key(self):
        return bool(self.private_key_encrypted)

    def private_key_pem(self):
        """Return the decrypted PEM private key; raise CertificateKeyError when the encryption key changed."""
        from .certificates import decrypt_private_key

        if not self.private_key_encrypted:
            raise ValueError(f"Certificate {self.pk} ({self.name}) has no private key; it can only be trusted.")
        return decrypt_private_key(self.private_key_encrypted)


class CertificateRevocationList(models.Model):
    """A certificate revocation list (CRL) issued by a certificate of the store, usually a CA certificate.

    An OPC UA connection rejects a server certificate that a CRL of one of the device's trusted
    certificates lists. Store one with ``certificates.import_crl``, which checks its signature, or let
    ``certificates.refresh_crls`` fetch it from the CRL distribution points of stored certificates.
    """

    name = models.CharField(max_length=200, unique=True)
    issuer_certificate = models.ForeignKey(
        Certificate, on_delete=models.CASCADE, related_name="revocation_lists", editable=False,
        help_text="The stored certificate whose key signed this CRL.",
    )
    crl_pem = models.TextField(editable=False, help_text="The CRL in PEM form.")
    issuer = models.CharField(max_length=500, editable=False)
    this_update = models.DateTimeField(editable=False)
    next_update = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the issuer publishes the next CRL; empty if not stated."
    )
    revoked_count = models.PositiveIntegerField(default=0, editable=False)
    fingerprint_sha256 = models.CharField(max_length=64, editable=False)
    distribution_point = models.CharField(
        max_length=1000, blank=True, editable=False,
        help_text="The CRL distribution point URL it was fetched from; empty for an uploaded CRL.",
    )
    fetched_at = models.DateTimeField(
        null=True, blank=True, editable=False,
        help_text="When the distribution point last returned a valid CRL; empty for an uploaded CRL.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "certificate revocation list"
        constraints = [
            models.UniqueConstraint(fields=["fingerprint_sha256"], name="protocols_crl_unique_fingerprint"),
        ]

    def __str__(self):
        return f"{self.name} ({self.revoked_count} revoked)"


class PollGroup(models.Model):
    """Modbus devices polled together on one interval that the tenant's admins set.

    Each group has a django-celery-beat periodic task in the tenant schema, kept in step by
    ``save`` (see apps.protocols.schedules), so beat picks up a changed interval without a
    restart. Devices in a group are polled only when its task runs, not on their own interval.
    """

    name = models.CharField(max_length=200, unique=True)
    interval = models.PositiveIntegerField(
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(86400)],
        help_text="Seconds between polls of the group's devices, from 1 to 86400.",
    )
    enabled = models.BooleanField(default=True, help_text="Clear to stop polling the group's devices.")
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.SET_NULL, null=True, blank=True, editable=False,
        related_name="+", help_text="The beat entry that sends the group's poll task.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return f"{self.name} (every {self.interval} s)"

    def save(self, *args, **kwargs):
        from .schedules import sync_periodic_task

        with transaction.atomic():
            super().save(*args, **kwargs)
            sync_periodic_task(self)


# bulk_create() checks the max_devices quota, which save() checks through pre_save.
class DeviceQuerySet(QuotaCheckedQuerySet):
    def with_certificates(self):
        """Load the certificates that an OPC UA driver needs, so it never queries the database itself."""
        return self.select_related("client_certificate").prefetch_related(
            "trusted_certificates", "trusted_certificates__revocation_lists"
        )

    def enabled(self):
        return self.filter(enabled=True)

    def due(self, now=None):
        """Return the enabled polled devices whose poll is due; devices of a poll group wait for its task."""
        return self.enabled().filter(next_poll_at__lte=now or timezone.now(), poll_group__isnull=True).exclude(
            protocol__in=SUBSCRIPTION_PROTOCOLS
        )

    def subscribed(self):
        """Return the enabled devices that the gateway keeps connections to."""
        return self.enabled().filter(protocol__in=SUBSCRIPTION_PROTOCOLS)


class Device(models.Model):
    """A field device or broker connection, such as a boiler controller that serves Modbus TCP.

    Modbus devices are polled every ``poll_interval``. For MQTT, host and port name the
    broker. For OPC UA, host, port and ``endpoint_path`` make the endpoint URL. For DNP3,
    host and port name the outstation. The gateway process keeps MQTT, OPC UA and DNP3
    connections open instead of polling.
    """

    name = models.CharField(max_length=200, unique=True)
    protocol = models.CharField(max_length=32, choices=Protocol.choices, default=Protocol.MODBUS_TCP)
    host = models.CharField(
        max_length=253, validators=[validate_host], help_text="IP address or host name of the device or gateway."
    )
    port = models.PositiveIntegerField(default=502, validators=[MinValueValidator(1), MaxValueValidator(65535)])
    unit_id = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(0), MaxValueValidator(255)],
        help_text="Modbus unit (slave) id; 0 and 255 address a TCP device directly.",
    )
    poll_interval = models.FloatField(
        default=5.0,
        # Celery beat looks for due devices once per second, so shorter intervals would not be kept.
        validators=[MinValueValidator(1.0), MaxValueValidator(86400)],
        help_text="Seconds between polls, at least 1; in a poll group only the base of the back-off after failures.",
    )
    poll_group = models.ForeignKey(
        PollGroup, on_delete=models.SET_NULL, null=True, blank=True, related_name="devices",
        help_text="Modbus: poll on this group's interval instead of the device's own; empty for its own.",
    )
    timeout = models.FloatField(
        default=3.0,
        # A poll may take at most 20 s in all (polling.MAX_POLL_SECONDS), so a longer wait could never end.
        validators=[MinValueValidator(0.1), MaxValueValidator(20)],
        help_text="Seconds to wait for a response, at most 20.",
    )
    enabled = models.BooleanField(default=True)

    endpoint_path = models.CharField(
        max_length=200,
        blank=True,
        help_text="OPC UA endpoint path after host and port, e.g. '/freeopcua/server/'; empty for none.",
    )
    username = models.CharField(max_length=150, blank=True, help_text="MQTT or OPC UA user name; empty for none.")
    # NOTE: stored in clear text like other connection settings; restrict database and admin access.
    password = models.CharField(max_length=256, blank=True, help_text="MQTT or OPC UA password; empty for none.")
    client_id = models.CharField(
        max_length=128,
        blank=True,
        help_text="MQTT client id, fixed so that the broker keeps the session across reconnects; "
        "empty for thermacore-<tenant>-<device id>.",
    )
    qos = models.PositiveSmallIntegerField(
        choices=MqttQos.choices, default=MqttQos.AT_LEAST_ONCE, help_text="MQTT quality of service of subscriptions."
    )
    tls_ca_file = models.CharField(
        max_length=500, blank=True, help_text="Path of the CA certificate file on the gateway host; set to use TLS."
    )
    tls_cert_file = models.CharField(
        max_length=500, blank=True, help_text="Path of the client certificate file (PEM) on the gateway host."
    )
    tls_key_file = models.CharField(
        max_length=500, blank=True, help_text="Path of the client certificate's private key file (PEM)."
    )
    tls_verify_hostname = models.BooleanField(
        default=True,
        help_text="MQTT over TLS: check that the broker's certificate names the host; turn off only for brokers "
        "reached by an address their certificate does not list.",
    )

    opcua_security_mode = models.CharField(
        max_length=16, choices=OpcUaSecurityMode.choices, default=OpcUaSecurityMode.NONE,
        help_text="OPC UA message security; Sign and Sign and encrypt need a client certificate and trusted certificates.",
    )
    opcua_security_policy = models.CharField(
        max_length=32, choices=OpcUaSecurityPolicy.choices, default=OpcUaSecurityPolicy.BASIC256SHA256,
        help_text="OPC UA security policy, used unless the security mode is None.",
    )
    client_certificate = models.ForeignKey(
        Certificate, on_delete=models.PROTECT, null=True, blank=True, related_name="client_devices",
        limit_choices_to={"private_key_encrypted__gt": ""},
        help_text="ThermaCore's certificate and private key for this connection: OPC UA security, MQTT TLS "
        "client authentication, and for DNP3 it turns TLS on.",
    )
    trusted_certificates = models.ManyToManyField(
        Certificate, blank=True, related_name="trusting_devices",
        help_text="Server certificates, or CA certificates of them, that this device's OPC UA server, MQTT broker "
        "or DNP3 outstation may present; for MQTT any of them turns TLS on.",
    )

    dnp3_master_address = models.PositiveIntegerField(
        default=1, validators=[MaxValueValidator(65519)], help_text="DNP3 link address of ThermaCore (the master)."
    )
    dnp3_outstation_address = models.PositiveIntegerField(
        default=10, validators=[MaxValueValidator(65519)], help_text="DNP3 link address of the outstation."
    )
    integrity_interval = models.FloatField(
        default=3600.0,
        validators=[MinValueValidator(1)],
        help_text="DNP3: seconds between integrity polls (all static data and events).",
    )
    event_poll_interval = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.5)],
        help_text="DNP3: seconds between class 1, 2 and 3 event polls; empty to rely on unsolicited responses.",
    )
    time_sync = models.BooleanField(
        default=False, help_text="DNP3: set the outstation's clock (LAN procedure) when it asks for time."
    )

    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.UNKNOWN, editable=False)
    last_seen = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_poll_duration_ms = models.FloatField(null=True, blank=True, editable=False)
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    error_count = models.PositiveBigIntegerField(default=0, editable=False)
    next_poll_at = models.DateTimeField(default=timezone.now, editable=False, db_index=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def save(self, *args, **kwargs):
        # A device whose connection was just fixed should not wait out the back-off of its old failures.
        if self.pk is not None and self._connection_changed(kwargs.get("update_fields")):
            self.next_poll_at = timezone.now()
            self.consecutive_failures = 0
            if kwargs.get("update_fields") is not None:
                kwargs["update_fields"] = {*kwargs["update_fields"], "next_poll_at", "consecutive_failures"}
        super().save(*args, **kwargs)

    def _connection_changed(self, update_fields):
        fields = [name for name in CONNECTION_FIELDS if update_fields is None or name in update_fields]
        if not fields:
            return False
        stored = Device.objects.filter(pk=self.pk).values(*fields).first()
        return stored is not None and any(stored[name] != getattr(self, name) for name in fields)

    def clean(self):
        errors = {}
        if self.tls_cert_file and not self.tls_ca_file:
            errors["tls_ca_file"] = "A client certificate needs TLS; set the CA certificate file too."
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            errors["tls_key_file"] = "Set the client certificate file and its key file together, or neither."
        for field in TLS_FILE_FIELDS:
            if getattr(self, field) and field not in errors:
                try:
                    resolve_tls_file(field, getattr(self, field))
                except ValidationError as exc:
                    errors.update(exc.message_dict)
        if self.endpoint_path and not self.endpoint_path.startswith("/"):
            errors["endpoint_path"] = f"Endpoint path {self.endpoint_path!r} must start with '/', e.g. '/server/'."
        if self.password and not self.username:
            errors["username"] = "A password needs a user name; set the user name or clear the password."
        self._clean_opcua_security(errors)
        if self.poll_group_id is not None and self.protocol in SUBSCRIPTION_PROTOCOLS:
            errors["poll_group"] = (
                f"A poll group only applies to polled (Modbus TCP) devices, not {self.protocol}; clear it."
            )
        if errors:
            raise ValidationError(errors)


    def _clean_opcua_security(self, errors):
        if self.opcua_security_mode == OpcUaSecurityMode.NONE:
            return
        if self.protocol != Protocol.OPCUA:
            errors["opcua_security_mode"] = "A security mode only applies to OPC UA devices; set it to None."
        elif self.client_certificate is None:
            errors["client_certificate"] = (
                f"Security mode {self.get_opcua_security_mode_display()!r} needs a client certificate; "
                "generate one under Certificates or set the mode to None."
            )
        elif not self.client_certificate.has_private_key:
            errors["client_certificate"] = (
                f"Certificate {self.client_certificate.name!r} has no private key, so it cannot be a client certificate."
            )
        elif not self.client_certificate.application_uri:
            errors["client_certificate"] = (
                f"Certificate {self.client_certificate.name!r} has no URI subject alternative name, which OPC UA "
                "needs as the application URI; generate a certificate instead."
            )


class Point(models.Model):
    """A register, bit, MQTT topic or OPC UA variable of a device that delivers the values of one sensor."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="points")
    sensor = models.ForeignKey(Sensor, on_delete=models.CASCADE, related_name="points")
    register_type = models.CharField(max_length=16, choices=RegisterType.choices, default=RegisterType.HOLDING)
    address = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(65535)], help_text="0-based register or coil address."
    )
    data_type = models.CharField(max_length=16, choices=DataType.choices, default=DataType.UINT16)
    byte_order = models.CharField(max_length=4, choices=ByteOrder.choices, default=ByteOrder.ABCD)
    bit = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(15)], help_text="Bit index 0-15, for data type 'bit'."
    )
    scale = models.FloatField(default=1.0, help_text="Engineering value = raw value × scale + offset.")
    offset = models.FloatField(default=0.0)
    scale_factor_address = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(65535)],
        help_text="Address of a SunSpec scale-factor register (int16, same register table); "
        "the value is multiplied by 10 to the power of that register's value, read in the same poll.",
    )
    topic = models.CharField(
        max_length=255,
        blank=True,
        help_text="MQTT topic filter; '+' matches one level and '#' all further levels, e.g. 'plant/+/boiler1/temp'.",
    )
    json_path = models.CharField(
        max_length=255,
        blank=True,
        help_text="JSONPath of the value in a JSON payload, e.g. '$.boiler.supply.temp'; empty for a plain number.",
    )
    timestamp_path = models.CharField(
        max_length=255,
        blank=True,
        help_text="JSONPath of the source timestamp (epoch s or ms, or ISO 8601 with offset); "
        "empty to use the arrival time.",
    )
    sparkplug_metric = models.CharField(
        max_length=255,
        blank=True,
        help_text="Sparkplug B metric name from the birth certificate, e.g. 'Boiler/SupplyTemp'; the topic is then "
        "'spBv1.0/<group>/<edge node>' or 'spBv1.0/<group>/<edge node>/<device>'.",
    )
    node_id = models.CharField(
        max_length=255,
        blank=True,
        help_text="OPC UA node id of the variable, e.g. 'ns=2;s=Boiler1.SupplyTemp' or 'ns=3;i=1001'.",
    )
    sampling_interval_ms = models.FloatField(
        default=1000.0,
        validators=[MinValueValidator(0)],
        help_text="OPC UA sampling interval in milliseconds; 0 asks the server for its fastest rate.",
    )
    deadband = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="OPC UA absolute deadband in the variable's own units; changes smaller than this are not sent.",
    )
    dnp3_type = models.CharField(
        max_length=32, choices=Dnp3PointType.choices, blank=True, help_text="DNP3 point type of the outstation."
    )
    dnp3_index = models.PositiveIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(65535)], help_text="DNP3 point index within its type."
    )
    dnp3_control = models.CharField(
        max_length=16, choices=Dnp3Control.choices, default=Dnp3Control.LATCH,
        help_text="DNP3 binary output status points: the control relay output block a setpoint sends.",
    )
    dnp3_on_time_ms = models.PositiveIntegerField(
        default=1000, validators=[MaxValueValidator(2**32 - 1)],
        help_text="DNP3 pulse and trip/close controls: milliseconds the output is on.",
    )
    dnp3_off_time_ms = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(2**32 - 1)],
        help_text="DNP3 pulse controls: milliseconds the output is off after the pulse.",
    )
    dnp3_operate_mode = models.CharField(
        max_length=24, choices=Dnp3OperateMode.choices, default=Dnp3OperateMode.SELECT_BEFORE_OPERATE,
        help_text="DNP3 setpoints: select before operate (two requests, the outstation checks both) or direct operate.",
    )
    enabled = models.BooleanField(default=True)
    last_error = models.TextField(
        blank=True, editable=False, help_text="Why the last read of this point gave bad quality; empty when good."
    )

    class Meta:
        ordering = ["device", "register_type", "address"]
        constraints = [
            models.UniqueConstraint(fields=["device", "sensor"], name="protocols_point_unique_sensor_per_device"),
        ]

    def __str__(self):
        if self.device.protocol == Protocol.DNP3:
            return f"{self.device.name} {self.dnp3_type} {self.dnp3_index} → {self.sensor_id}"
        if self.device.protocol == Protocol.OPCUA:
            return f"{self.device.name} {self.node_id} → {self.sensor_id}"
        if self.device.protocol == Protocol.MQTT:
            return f"{self.device.name} {self.topic} {self.json_path} → {self.sensor_id}".replace("  ", " ")
        return f"{self.device.name} {self.register_type} {self.address} → {self.sensor_id}"

    @property
    def register_count(self):
        if self.register_type in BIT_REGISTER_TYPES:
            return 1
        return register_count(self.data_type)

    def clean(self):
        errors = {}
        if self.scale == 0:
            errors["scale"] = "Scale 0 would turn every value into the offset; use 1 for no scaling."
        try:
            protocol = self.device.protocol
        except Point.device.RelatedObjectDoesNotExist:
            protocol = None
        if protocol == Protocol.MQTT:
            self._clean_mqtt(errors)
        elif protocol == Protocol.OPCUA:
            self._clean_opcua(errors)
        elif protocol == Protocol.DNP3:
            self._clean_dnp3(errors)
        else:
            self._clean_modbus(errors)
        if protocol != Protocol.MQTT and self.sparkplug_metric:
            errors["sparkplug_metric"] = "A Sparkplug B metric only applies to MQTT points; clear it."
        if protocol != Protocol.OPCUA and self.node_id:
            errors["node_id"] = "A node id only applies to OPC UA points; clear it."
        if protocol != Protocol.DNP3 and (self.dnp3_type or self.dnp3_index is not None):
            errors["dnp3_type"] = "A DNP3 point type and index only apply to DNP3 points; clear them."
        if errors:
            raise ValidationError(errors)

    def _clean_mqtt(self, errors):
        if self.sparkplug_metric:
            self._clean_sparkplug(errors)
        elif not self.topic:
            errors["topic"] = "An MQTT point needs a topic filter, e.g. 'plant/boiler1/temp'."
        else:
            try:
                validate_topic_filter(self.topic)
            except ValueError as exc:
                errors["topic"] = str(exc)
        for field in ("json_path", "timestamp_path"):
            if getattr(self, field):
                try:
                    validate_json_path(getattr(self, field))
                except ValueError as exc:
                    errors[field] = str(exc)
        if self.address is not None:
            errors["address"] = "A register address only applies to Modbus points; clear it for MQTT."

    def _clean_sparkplug(self, errors):
        try:
            validate_sparkplug_topic(self.topic)
        except ValueError as exc:
            errors["topic"] = str(exc)
        for field in ("json_path", "timestamp_path"):
            if getattr(self, field):
                errors[field] = f"A Sparkplug B metric has no {field.replace('_', ' ')}; clear it."

    def _clean_opcua(self, errors):
        if not self.node_id:
            errors["node_id"] = "An OPC UA point needs a node id, e.g. 'ns=2;s=Boiler1.SupplyTemp'."
        else:
            try:
                validate_node_id(self.node_id)
            except ValueError as exc:
                errors["node_id"] = str(exc)
        for field in ("topic", "json_path", "timestamp_path"):
            if getattr(self, field):
                errors[field] = f"The {field.replace('_', ' ')} only applies to MQTT points; clear it for OPC UA."
        if self.address is not None:
            errors["address"] = "A register address only applies to Modbus points; clear it for OPC UA."

    def _clean_dnp3(self, errors):
        if not self.dnp3_type:
            errors["dnp3_type"] = "A DNP3 point needs a point type, e.g. 'analog_input'."
        if self.dnp3_index is None:
            errors["dnp3_index"] = "A DNP3 point needs the point index in the outstation, from 0."
        for field in ("topic", "json_path", "timestamp_path"):
            if getattr(self, field):
                errors[field] = f"The {field.replace('_', ' ')} only applies to MQTT points; clear it for DNP3."
        if self.address is not None:
            errors["address"] = "A register address only applies to Modbus points; clear it for DNP3."
        if self.dnp3_type == Dnp3PointType.ANALOG_OUTPUT_STATUS and self.data_type not in DNP3_ANALOG_OUTPUT_TYPES:
            # A client that sends no data_type gets the model default, so the message names where it came from.
            is_default = self.data_type == self._meta.get_field("data_type").default
            errors["data_type"] = (
                "DNP3 analog output points take data_type 'int32' (group 41 var 1), 'int16' (var 2) or "
                f"'float32' (var 3), but this point has '{self.data_type}'"
                f"{', the default when data_type is not given' if is_default else ''}; set data_type to one of them."
            )

    def _clean_modbus(self, errors):
        for field in ("topic", "json_path", "timestamp_path"):
            if getattr(self, field):
                errors[field] = f"The {field.replace('_', ' ')} only applies to MQTT points; clear it for Modbus."
        if self.address is None:
            errors["address"] = "A Modbus point needs a register or coil address from 0 to 65535."
        is_bit_table = self.register_type in BIT_REGISTER_TYPES
        if is_bit_table and self.data_type != DataType.BOOL:
            errors["data_type"] = (
                f"Data type '{self.data_type}' does not fit a {self.register_type}; use 'bool' for coils "
                "and discrete inputs."
            )
        if not is_bit_table and self.data_type == DataType.BOOL:
            errors["data_type"] = "Data type 'bool' is for coils and discrete inputs; use 'bit' for a register bit."
        if self.data_type == DataType.BIT and self.bit is None:
            errors["bit"] = "Data type 'bit' needs a bit index from 0 to 15."
        if self.data_type != DataType.BIT and self.bit is not None:
            errors["bit"] = f"A bit index only applies to data type 'bit', not '{self.data_type}'; clear it."
        if self.scale_factor_address is not None and is_bit_table:
            errors["scale_factor_address"] = (
                f"A scale-factor register does not apply to a {self.register_type}; clear it."
            )
        valid_type = self.data_type in DataType.values and self.register_type in RegisterType.values
        if self.address is not None and not errors and valid_type and self.address + self.register_count > 65536:
            errors["address"] = (
                f"Address {self.address} with {self.register_count} registers runs past the last register 65535."
            )

    def to_engineering(self, raw, scale_factor=0):
        """Convert a decoded register value to engineering units.

        ``scale_factor`` is the SunSpec power of ten read from ``scale_factor_address``.
        """
        if isinstance(raw, bool):
            return float(raw)
        return raw * self.scale * 10.0**scale_factor + self.offset

    def to_raw(self, value, scale_factor=0):
        """Convert an engineering value to the register value before encoding, the inverse of to_engineering."""
        return (value - self.offset) / (self.scale * 10.0**scale_factor)
