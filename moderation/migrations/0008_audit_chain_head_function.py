"""On PostgreSQL, one function takes the audit chain's lock and reads its head.

audit.record used to take the lock in one statement and read the head in the next: two round
trips while every other writer waits. The read must come after the lock in a statement of its
own, since a statement's snapshot is taken when it starts; inside a VOLATILE function each
statement takes a fresh snapshot, so the SELECT here sees the entry that the previous holder
committed before its lock was released, in one round trip from Python.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION moderation_audit_lock_head(
    lock_key bigint, OUT head_seq bigint, OUT head_hash varchar
) LANGUAGE plpgsql VOLATILE
-- The table is found where it was when the function was made, whatever a caller's search_path.
SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    SELECT seq, entry_hash INTO head_seq, head_hash
        FROM moderation_auditentry ORDER BY seq DESC LIMIT 1;
END;
$$;
"""

DROP = "DROP FUNCTION IF EXISTS moderation_audit_lock_head(bigint);"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("moderation", "0007_audit_filter_indexes")]

    operations = [migrations.RunPython(forwards, backwards)]
