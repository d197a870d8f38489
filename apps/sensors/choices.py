from django.db import models


class Quantity(models.TextChoices):
    TEMPERATURE = "temperature", "Temperature"
    PRESSURE = "pressure", "Pressure"
    FLOW = "flow", "Flow"
    POWER = "power", "Power"
    ENERGY = "energy", "Energy"
    PERCENT = "percent", "Percentage"
    RATIO = "ratio", "Ratio"
    STATE = "state", "State"
    OTHER = "other", "Other"
