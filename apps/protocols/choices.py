from django.db import models


class Protocol(models.TextChoices):
    MODBUS_TCP = "modbus_tcp", "Modbus TCP"
    MQTT = "mqtt", "MQTT"
    OPCUA = "opcua", "OPC UA"
    DNP3 = "dnp3", "DNP3"


class MqttQos(models.IntegerChoices):
    AT_MOST_ONCE = 0, "0: at most once"
    AT_LEAST_ONCE = 1, "1: at least once"
    EXACTLY_ONCE = 2, "2: exactly once"


class DeviceStatus(models.TextChoices):
    UNKNOWN = "unknown", "Not polled yet"
    ONLINE = "online", "Online"
    OFFLINE = "offline", "Offline"
    ERROR = "error", "Error"


class RegisterType(models.TextChoices):
    HOLDING = "holding", "Holding register"
    INPUT = "input", "Input register"
    COIL = "coil", "Coil"
    DISCRETE = "discrete", "Discrete input"


class DataType(models.TextChoices):
    INT16 = "int16", "int16"
    UINT16 = "uint16", "uint16"
    INT32 = "int32", "int32"
    UINT32 = "uint32", "uint32"
    INT64 = "int64", "int64"
    UINT64 = "uint64", "uint64"
    FLOAT32 = "float32", "float32"
    FLOAT64 = "float64", "float64"
    BIT = "bit", "One bit of a register"
    BOOL = "bool", "Boolean (coil or discrete input)"


class ByteOrder(models.TextChoices):
    ABCD = "ABCD", "ABCD: big-endian, high word first"
    CDAB = "CDAB", "CDAB: big-endian words, low word first"
    BADC = "BADC", "BADC: bytes swapped in each word, high word first"
    DCBA = "DCBA", "DCBA: little-endian"


class Dnp3PointType(models.TextChoices):
    ANALOG_INPUT = "analog_input", "Analog input (group 30/32)"
    BINARY_INPUT = "binary_input", "Binary input (group 1/2)"
    DOUBLE_BIT_BINARY = "double_bit_binary", "Double-bit binary input (group 3/4)"
    COUNTER = "counter", "Counter (group 20/22)"
    FROZEN_COUNTER = "frozen_counter", "Frozen counter (group 21/23)"
    BINARY_OUTPUT_STATUS = "binary_output_status", "Binary output status (group 10/11)"
    ANALOG_OUTPUT_STATUS = "analog_output_status", "Analog output status (group 40/42)"


class OpcUaSecurityMode(models.TextChoices):
    NONE = "none", "None"
    SIGN = "sign", "Sign"
    SIGN_AND_ENCRYPT = "sign_and_encrypt", "Sign and encrypt"


class OpcUaSecurityPolicy(models.TextChoices):
    BASIC256SHA256 = "Basic256Sha256", "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128Sha256RsaOaep", "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256Sha256RsaPss", "Aes256_Sha256_RsaPss"


class Dnp3Control(models.TextChoices):
    """Control relay output block (CROB, group 12 var 1) that a setpoint on a DNP3 binary output sends."""

    LATCH = "latch", "Latch: 1 latches on, 0 latches off"
    PULSE = "pulse", "Pulse on: 1 pulses on for the on time, then off for the off time"
    TRIP_CLOSE = "trip_close", "Trip/close: 1 closes, 0 trips, as a pulse of the on time"


class Dnp3OperateMode(models.TextChoices):
    SELECT_BEFORE_OPERATE = "select_before_operate", "Select before operate"
    DIRECT_OPERATE = "direct_operate", "Direct operate"
