"""Channels group names; each carries the tenant schema so pushes never cross tenants."""


def unit_group(schema, unit_id):
    return f"{schema}.unit.{unit_id}"
