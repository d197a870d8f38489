"""Measure the in-process alarm evaluation rate against a bare limit comparison of the same readings.

Every sensor of a scratch tenant has one HI rule (limit 100, deadband 2).
The readings stay in the normal range except for a short excursion above
the limit every ``--excursion-every`` readings per sensor, so the rules
activate and return to normal as they would in a plant. Three rates are
measured in the same run on the same readings:

- baseline: a Python loop comparing each value with its limit;
- tracker: ``apps.alarms.evaluation.ConditionTracker.feed`` per reading,
  the condition logic without database access;
- evaluator: ``apps.alarms.evaluator.evaluate_readings`` per batch, the
  telemetry subscriber itself (rule query, row locks, rule state update,
  alarm transitions), without storing the readings.

    python bench/alarm_evaluation.py --readings 200000 --batch 5000
"""

import argparse
import time
from datetime import datetime, timedelta, timezone

from scratch import make_sensors, scratch_tenant

from apps.alarms.choices import Condition
from apps.alarms.evaluation import ConditionTracker
from apps.alarms.evaluator import evaluate_readings
from apps.alarms.models import Alarm, AlarmRule
from apps.sensors.samples import Sample

SCHEMA = "bench_alarms"
START = datetime(2026, 1, 5, tzinfo=timezone.utc)
LIMIT = 100.0


def make_samples(sensor_ids, total, excursion_every):
    """Return ``total`` samples, one per sensor per second, with three readings above the limit per excursion."""
    samples = []
    for index in range(total):
        step = index // len(sensor_ids)
        in_excursion = excursion_every > 0 and step % excursion_every < 3
        value = 105.0 if in_excursion else 50.0 + step % 20
        samples.append(Sample(sensor_ids[index % len(sensor_ids)], START + timedelta(seconds=step), value, 0))
    return samples


def run_baseline(samples):
    started = time.perf_counter()
    in_alarm = 0
    for sample in samples:
        if sample.value is not None and sample.value >= LIMIT:
            in_alarm += 1
    return time.perf_counter() - started


def run_tracker(rules_by_sensor, samples):
    trackers = {sensor_id: ConditionTracker() for sensor_id in rules_by_sensor}
    started = time.perf_counter()
    for sample in samples:
        trackers[sample.sensor_id].feed(rules_by_sensor[sample.sensor_id], sample.time, sample.value, sample.quality)
    return time.perf_counter() - started


def run_evaluator(samples, batch_size):
    started = time.perf_counter()
    for offset in range(0, len(samples), batch_size):
        batch = samples[offset:offset + batch_size]
        evaluate_readings(SCHEMA, batch, {sample.sensor_id for sample in batch})
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000, help="Readings per run.")
    parser.add_argument("--batch", type=int, default=5_000, help="Readings per evaluate_readings call.")
    parser.add_argument("--sensors", type=int, default=100, help="Sensors (one HI rule each).")
    parser.add_argument("--excursion-every", type=int, default=100,
                        help="Seconds between the starts of two excursions above the limit, per sensor; 0 for none.")
    args = parser.parse_args()

    with scratch_tenant(SCHEMA):
        sensor_ids = make_sensors(args.sensors, "alarm")
        rules = [
            AlarmRule.objects.create(sensor_id=sensor_id, condition=Condition.HIGH, limit=LIMIT, deadband=2.0)
            for sensor_id in sensor_ids
        ]
        rules_by_sensor = {rule.sensor_id: rule for rule in rules}
        samples = make_samples(sensor_ids, args.readings, args.excursion_every)

        baseline_seconds = run_baseline(samples)
        tracker_seconds = run_tracker(rules_by_sensor, samples)
        evaluator_seconds = run_evaluator(samples, args.batch)
        occurrences = Alarm.objects.count()

    baseline_rate = args.readings / baseline_seconds
    print(f"readings={args.readings} batch={args.batch} sensors={args.sensors} alarm occurrences={occurrences}")
    for label, seconds in (("baseline", baseline_seconds), ("tracker", tracker_seconds),
                           ("evaluator", evaluator_seconds)):
        rate = args.readings / seconds
        print(f"{label:10} {rate:12,.0f} readings/s ({seconds:.2f} s), ratio to baseline {rate / baseline_rate:.3f}")


if __name__ == "__main__":
    main()
