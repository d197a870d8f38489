from django.db import models


class Protocol(models.TextChoices):
    MODBUS_TCP = "modbus_tcp", "Modbus TCP"


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
