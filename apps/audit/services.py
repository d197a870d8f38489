"""Write audit entries: `record` appends one entry to the current tenant's hash chain.

Call `record` inside the same `transaction.atomic()` block as the change it
describes. Then an audit write failure rolls the change back, and a change
that rolls back takes its entry with it.
"""

import json
import logging
from dataclasses import dataclass

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context
from rest_framework_api_key.models import AbstractAPIKey

from .chain import GENESIS_HASH, entry_hash
from .choices import ActorType, AuditAction, Outcome
from .context import context_from_request, current_context
from .models import AuditEntry
from .monitoring import inspect_entry
from .redaction import REDACTED, is_secret_field, redact

logger = logging.getLogger(__name__)

# First key of the transaction-level advisory lock that serialises the
# writers of one tenant's chain; the second key is a hash of the schema name.
CHAIN_LOCK_NAMESPACE = 0x41554454



@dataclass(frozen=True)
class Actor:
    """The acting party of an entry: a user, an API key, a system job or an edge agent."""

    type: str
    id: str = ""
    name: str = ""

    @classmethod
    def for_user(cls, user):
        if user is None or not user.is_authenticated:
            return cls(ActorType.ANONYMOUS)
        return cls(ActorType.USER, str(user.pk), user.get_username())

    @classmethod
    def api_key(cls, prefix, name):
        """Return the actor for an API key, identified by its public prefix (its primary key embeds the hash)."""
        return cls(ActorType.API_KEY, str(prefix), name)

    @classmethod
    def system_job(cls, job_name):
        """Return the actor for a background job, named by its stable task name, e.g. "telemetry.ensure_partitions"."""
        return cls(ActorType.SYSTEM_JOB, job_name, job_name)

    @classmethod
    def edge_agent(cls, agent_id, name):
        return cls(ActorType.EDGE_AGENT, str(agent_id), name)


@dataclass(frozen=True)
class AuditTarget:
    """The object an entry is about, kept by type and id so it outlives a deleted object."""

    type: str = ""
    id: str = ""
    repr: str = ""

    @classmethod
    def of(cls, obj):
        if obj is None:
            return cls()
        if isinstance(obj, cls):
            return obj
        if obj.pk is None:
            raise ValueError(
                f"Cannot audit {obj._meta.label} {obj!s} without a primary key; take AuditTarget.of(obj) "
                "before deleting the object."
            )
        return cls(f"{obj._meta.app_label}.{obj._meta.model_name}", str(obj.pk), str(obj)[:200])


def to_json_value(value):
    """Return value as plain JSON types (dates as ISO strings, decimals as strings)."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def snapshot(instance):
    """Return the concrete field values of a model instance as JSON types, with secrets redacted.

    Foreign keys appear under their field name with the related id.
    """
    values = {}
    label = instance._meta.label_lower
    for field in instance._meta.concrete_fields:
        if field.primary_key:
            continue
        value = REDACTED if is_secret_field(label, field.name) else field.value_from_object(instance)
        values[field.name] = value
    return to_json_value(values)


def field_changes(before, after):
    """Return {"field": [before, after]} for every field whose value differs between two snapshots.

    Either snapshot may be None: a creation has no before, a deletion no after.
    """
    before = before or {}
    after = after or {}
    changes = {}
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old != new:
            changes[name] = [old, new]
    return changes


def _resolve_actor(actor, context):
    if isinstance(actor, Actor):
        return actor
    if hasattr(actor, "is_authenticated"):
        # A request authenticated with an API key acts as the key's machine user; name the key instead.
        credential = getattr(context.request, "auth", None) if context else None
        if isinstance(credential, AbstractAPIKey) and getattr(credential, "user_id", None) == actor.pk:
            return Actor.api_key(credential.prefix, credential.name)
        return Actor.for_user(actor)
    raise TypeError(
        f"actor must be an Actor or a user, not {actor!r}; use Actor.system_job(name) for background jobs."
    )


def record(
    action,
    *,
    actor,
    obj=None,
    before=None,
    after=None,
    changes=None,
    outcome=Outcome.SUCCESS,
    detail=None,
    request=None,
):
    """Append one entry to the current tenant's audit chain and return it.

    `before` and `after` are snapshots (see `snapshot`); their differences
    are stored unless `changes` is given. Source address, user agent and
    request id come from `request`, or else from the request being served.
    The chain's advisory lock is held until the surrounding transaction
    ends, so concurrent writers append one after another and never fork it.
    """
    action = AuditAction(action)
    outcome = Outcome(outcome)
    schema = connection.schema_name
    if schema == get_public_schema_name():
        raise RuntimeError(
            f"Cannot record {action.value}: the connection is on the public schema, but audit entries belong "
            "to a tenant; run inside schema_context(<tenant schema>)."
        )
    context = context_from_request(request) if request is not None else current_context()
    acting = _resolve_actor(actor, context)
    target = AuditTarget.of(obj)
    if changes is None:
        changes = field_changes(before, after)

    with transaction.atomic():
        lock_chain(schema)
        last = AuditEntry.objects.order_by("-sequence").values("sequence", "hash").first()
        entry = AuditEntry(
            sequence=last["sequence"] + 1 if last else 1,
            time=timezone.now(),
            actor_type=acting.type,
            actor_id=acting.id,
            actor_name=acting.name[:150],
            source_ip=context.source_ip if context else None,
            user_agent=context.user_agent if context else "",
            request_id=context.request_id if context else "",
            action=action,
            object_type=target.type,
            object_id=target.id,
            object_repr=target.repr,
            outcome=outcome,
            # Whatever the caller passed, no secret reaches the append-only trail.
            changes=redact(to_json_value(changes)),
            detail=redact(to_json_value(detail or {})),
            previous_hash=last["hash"] if last else GENESIS_HASH,
        )
        entry.hash = entry_hash(hashed_values(entry, schema))
        entry.save(force_insert=True)
        if action != AuditAction.SECURITY_ALARM:
            inspect_entry(entry)

    logger.debug(
        "Audit entry %s on schema %s: %s %s:%s by %s:%s",
        entry.sequence, schema, action.value, target.type, target.id, acting.type, acting.id,
    )
    return entry


def lock_chain(schema):
    """Take the transaction-level advisory lock of a tenant's chain; it is released when the transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [CHAIN_LOCK_NAMESPACE, schema])


def hashed_values(entry, schema):
    """Return the mapping that apps.audit.chain hashes for an entry of the given tenant schema."""
    return {**entry_row(entry), "tenant": schema}


def entry_row(entry):
    """Return an entry's recorded fields by name, in the form exports and the verifier use."""
    return {
        "sequence": entry.sequence,
        "time": entry.time,
        "actor_type": str(entry.actor_type),
        "actor_id": entry.actor_id,
        "actor_name": entry.actor_name,
        "source_ip": entry.source_ip,
        "user_agent": entry.user_agent,
        "request_id": entry.request_id,
        "action": str(entry.action),
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "object_repr": entry.object_repr,
        "outcome": str(entry.outcome),
        "changes": entry.changes,
        "detail": entry.detail,
        "previous_hash": entry.previous_hash,
        "hash": entry.hash,
    }


def record_tenant_lifecycle(tenant, event, *, actor, detail=None):
    """Record a tenant lifecycle event (provisioned, suspended, resumed) in that tenant's own chain.

    Call it from the public schema inside the transaction of the change.
    `actor` is a platform user of the public schema, recorded as
    "platform:<name>" so it is not mistaken for a tenant user of the same
    id, or an Actor such as Actor.system_job("tenants.provision").
    """
    if not isinstance(actor, Actor):
        actor = Actor(ActorType.USER, str(actor.pk), f"platform:{actor.get_username()}")
    with schema_context(tenant.schema_name):
        return record(
            AuditAction.TENANT_LIFECYCLE, actor=actor, obj=AuditTarget("tenants.tenant", str(tenant.pk), tenant.name),
            detail={"event": event, **(detail or {})},
        )


def record_data_read(request, obj, *, start, end, rows):
    """Record that the request's user read `rows` rows of process data of `obj` in [start, end)."""
    return record(
        AuditAction.DATA_EXPORTED, actor=request.user, obj=obj, request=request,
        detail={"start": start.isoformat(), "end": end.isoformat(), "rows": rows, "path": request.path},
    )
