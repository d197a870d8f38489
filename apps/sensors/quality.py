"""Quality codes stored with every reading.

The ranges follow the OPC convention: good below 64, uncertain from 64 and
bad from 128, so that a range check gives the class and the exact code gives
the reason.
"""

from django.db import models


class Quality(models.IntegerChoices):
    GOOD = 0, "Good"
    UNCERTAIN = 64, "Uncertain"
    UNCERTAIN_LAST_USABLE = 65, "Uncertain: last usable value"
    UNCERTAIN_SENSOR_CAL = 66, "Uncertain: sensor not accurate"
    BAD = 128, "Bad"
    BAD_COMM_LOST = 129, "Bad: communication lost"
    BAD_OUT_OF_RANGE = 130, "Bad: outside the sensor's physical range"
    BAD_DEVICE_EXCEPTION = 131, "Bad: device exception"
    BAD_NOT_A_NUMBER = 132, "Bad: not a finite number"
    BAD_NOT_IMPLEMENTED = 133, "Bad: not implemented by the device"
    BAD_CONFIGURATION = 134, "Bad: configuration error"
    BAD_SENSOR_FAILURE = 135, "Bad: sensor failure"


def is_good(code):
    return code < Quality.UNCERTAIN


def is_bad(code):
    return code >= Quality.BAD


def quality_label(code):
    try:
        return Quality(code).label
    except ValueError:
        if is_bad(code):
            return "Bad"
        if code >= Quality.UNCERTAIN:
            return "Uncertain"
        return "Good"
