from django.db import models


class UnitKind(models.TextChoices):
    BOILER = "boiler", "Boiler"
    CHILLER = "chiller", "Chiller"
    HEAT_PUMP = "heat_pump", "Heat pump"
    CHP = "chp", "Combined heat and power"
    COOLING_TOWER = "cooling_tower", "Cooling tower"
    HEAT_EXCHANGER = "heat_exchanger", "Heat exchanger"
    PUMP = "pump", "Pump"
    OTHER = "other", "Other"


class UnitStatus(models.TextChoices):
    COMMISSIONING = "commissioning", "Commissioning"
    IN_SERVICE = "in_service", "In service"
    MAINTENANCE = "maintenance", "Maintenance"
    OUT_OF_SERVICE = "out_of_service", "Out of service"
    DECOMMISSIONED = "decommissioned", "Decommissioned"
