"""Start ThingsBoard IoT Gateway for bench/modbus_scaling.py, with its update check off.

Run this with the gateway's own Python (see bench/tb_gateway_bench.py), with
``TB_GW_CONFIG_DIR`` set to the folder that contains tb_gateway.json and modbus.json.
It writes logs.json there: the package's own logging configuration with its
named loggers set from INFO to WARNING, as the ThermaCore poller logs in the
benchmark. The root logger keeps the package's ERROR, which also drops the
deprecation warning that pymodbus 3.9 logs for every value the gateway decodes. The gateway's
``TBUpdater`` posts to an update service when it starts, so that check is
replaced by a no-op: the benchmark sends nothing beyond loopback.
"""

import json
import os
import sys
from pathlib import Path

import thingsboard_gateway
from thingsboard_gateway.tb_utility import tb_updater

LOG_LEVEL = "WARNING"


def write_logging_config(config_dir):
    default = Path(thingsboard_gateway.__file__).parent / "config" / "logs.json"
    config = json.loads(default.read_text())
    for logger in config.get("loggers", {}).values():
        logger["level"] = LOG_LEVEL
    (config_dir / "logs.json").write_text(json.dumps(config, indent=2))


def main():
    config_dir = os.environ.get("TB_GW_CONFIG_DIR")
    if not config_dir:
        sys.exit("TB_GW_CONFIG_DIR is not set; set it to the folder that holds tb_gateway.json.")
    config_dir = Path(config_dir)
    write_logging_config(config_dir)
    Path("logs").mkdir(exist_ok=True)
    tb_updater.TBUpdater.check_for_new_version = lambda self: None

    from thingsboard_gateway.gateway.tb_gateway_service import TBGatewayService

    TBGatewayService(str(config_dir / "tb_gateway.json"))


if __name__ == "__main__":
    main()
