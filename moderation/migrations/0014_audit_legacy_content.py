"""Entries of the hash-chain era become the first leaves of the verifiable log.

Each keeps its position (`seq`) and gets as `content` the exact bytes the chain hashed (its
canonical content, which includes its position and the previous entry's hash, rebuilt from its
columns as the chain walk read them), and as `leaf_hash` SHA-256(0x00 || content). The
sequencer builds the tree over them on its first run. An entry whose columns no longer hash to
its stored hash (edited before this migration) is migrated all the same, so that verify_audit
keeps reporting it.

The old guards go first: the trigger of 0003 refused every UPDATE (0015 puts in its place one
that allows only the sequencer's), and the chain lock function of 0008 has no caller left. Rows
are read and written in batches by id, so memory stays flat whatever the size of the log.
"""

import hashlib
import json
import logging
from datetime import UTC

from django.db import migrations

logger = logging.getLogger("moderation.migrations")

BATCH = 5000
TABLE = "moderation_auditentry"

DROP_OLD = """
DROP TRIGGER IF EXISTS moderation_auditentry_append_only ON moderation_auditentry;
DROP FUNCTION IF EXISTS moderation_auditentry_refuse_change();
DROP FUNCTION IF EXISTS moderation_audit_lock_head(bigint);
"""

# 0003's trigger and 0008's function, for migrating backwards.
RESTORE_OLD = """
CREATE OR REPLACE FUNCTION moderation_auditentry_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on moderation_auditentry is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER moderation_auditentry_append_only
    BEFORE UPDATE OR DELETE ON moderation_auditentry
    FOR EACH ROW EXECUTE FUNCTION moderation_auditentry_refuse_change();

CREATE OR REPLACE FUNCTION moderation_audit_lock_head(
    lock_key bigint, OUT head_seq bigint, OUT head_hash varchar
) LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT seq, entry_hash INTO head_seq, head_hash
        FROM moderation_auditentry ORDER BY seq DESC LIMIT 1;
END;
$$;
"""

FIELDS = (
    "id",
    "seq",
    "created_at",
    "actor_id",
    "actor_label",
    "action",
    "image_id",
    "state_before",
    "state_after",
    "reason",
    "detail",
    "ip_address",
    "user_agent",
    "prev_hash",
    "entry_hash",
)


def legacy_content(
    *,
    seq,
    created_at,
    actor_id,
    actor_label,
    action,
    image_id,
    state_before,
    state_after,
    reason,
    detail,
    ip_address,
    user_agent,
    prev_hash,
):
    """The hash chain's canonical content, byte for byte (moderation/audit/log.py before 0013)."""
    return json.dumps(
        {
            "seq": seq,
            "time": created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor_id": actor_id,
            "actor": actor_label,
            "action": action,
            "image_id": image_id,
            "state_before": state_before,
            "state_after": state_after,
            "reason": reason,
            "detail": detail,
            "ip": ip_address,
            "user_agent": user_agent,
            "prev": prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


def fill(apps, schema_editor):
    connection = schema_editor.connection
    postgres = connection.vendor == "postgresql"
    if postgres:
        schema_editor.execute(DROP_OLD, params=None)
    entries = apps.get_model("moderation", "AuditEntry").objects.using(connection.alias)
    last_id, mismatched = 0, 0
    while True:
        rows = list(entries.filter(id__gt=last_id).order_by("id").values_list(*FIELDS)[:BATCH])
        if not rows:
            break
        ids, contents, leaves = [], [], []
        for row in rows:
            values = dict(zip(FIELDS, row, strict=True))
            entry_id, stored = values.pop("id"), values.pop("entry_hash")
            content = legacy_content(**values)
            mismatched += hashlib.sha256(content).hexdigest() != stored
            ids.append(entry_id)
            contents.append(content)
            leaves.append(hashlib.sha256(b"\x00" + content).digest())
        with connection.cursor() as cursor:
            if postgres:
                cursor.execute(
                    f"UPDATE {TABLE} AS e SET content = v.content, leaf_hash = v.leaf "  # noqa: S608
                    "FROM unnest(%s::bigint[], %s::bytea[], %s::bytea[]) AS v(id, content, leaf) "
                    "WHERE e.id = v.id",
                    [ids, contents, leaves],
                )
            else:
                cursor.executemany(
                    f"UPDATE {TABLE} SET content = %s, leaf_hash = %s WHERE id = %s",  # noqa: S608
                    list(zip(contents, leaves, ids, strict=True)),
                )
        last_id = ids[-1]
    if mismatched:
        logger.warning(
            "%d audit entries did not match their hash before this migration (they were "
            "edited); verify_audit names them",
            mismatched,
        )


def unfill(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(RESTORE_OLD, params=None)


class Migration(migrations.Migration):
    dependencies = [("moderation", "0013_verifiable_log")]

    operations = [migrations.RunPython(fill, unfill)]
