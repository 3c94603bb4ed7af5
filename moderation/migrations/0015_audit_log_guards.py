"""On PostgreSQL, the database itself keeps the verifiable audit log append-only.

The model refuses changes too, but raw SQL, a shell or another client would not go through it.
- Audit entries: DELETE is refused, and UPDATE too, except the sequencer's one write per entry:
  an entry with no position and no leaf hash gets both, the leaf hash being SHA-256(0x00 ||
  content), and every other column stays exactly as it was. The columns are named one by one
  (five times cheaper than comparing whole rows as jsonb, which is most of the sequencer's
  cost); a column added later must be added here, and
  tests/test_sequencer.py::test_the_trigger_refuses_a_change_to_any_other_column fails until it is.
- Tree nodes and checkpoints: UPDATE and DELETE are refused.
TRUNCATE is not refused: Django's test runner empties tables with it, and it needs table-owner
rights, which the application's database role should not have in production.
"""

from django.db import migrations, models

CREATE = r"""
CREATE OR REPLACE FUNCTION moderation_auditentry_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE'
        AND OLD.seq IS NULL AND OLD.leaf_hash IS NULL AND NEW.seq IS NOT NULL
        AND NEW.leaf_hash = sha256('\x00'::bytea || NEW.content)
        AND (NEW.id, NEW.created_at, NEW.actor_id, NEW.actor_label, NEW.action, NEW.image_id,
             NEW.state_before, NEW.state_after, NEW.reason, NEW.detail, NEW.ip_address,
             NEW.user_agent, NEW.content, NEW.entry_hash, NEW.prev_hash)
            IS NOT DISTINCT FROM
            (OLD.id, OLD.created_at, OLD.actor_id, OLD.actor_label, OLD.action, OLD.image_id,
             OLD.state_before, OLD.state_after, OLD.reason, OLD.detail, OLD.ip_address,
             OLD.user_agent, OLD.content, OLD.entry_hash, OLD.prev_hash)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: % on moderation_auditentry is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Only the sequencer may set an entry''s position and leaf hash, once.';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER moderation_auditentry_append_only
    BEFORE UPDATE OR DELETE ON moderation_auditentry
    FOR EACH ROW EXECUTE FUNCTION moderation_auditentry_guard();

CREATE OR REPLACE FUNCTION moderation_audit_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER moderation_audittreenode_append_only
    BEFORE UPDATE OR DELETE ON moderation_audittreenode
    FOR EACH ROW EXECUTE FUNCTION moderation_audit_refuse_change();

CREATE TRIGGER moderation_auditcheckpoint_append_only
    BEFORE UPDATE OR DELETE ON moderation_auditcheckpoint
    FOR EACH ROW EXECUTE FUNCTION moderation_audit_refuse_change();
"""

DROP = """
DROP TRIGGER IF EXISTS moderation_auditcheckpoint_append_only ON moderation_auditcheckpoint;
DROP TRIGGER IF EXISTS moderation_audittreenode_append_only ON moderation_audittreenode;
DROP FUNCTION IF EXISTS moderation_audit_refuse_change();
DROP TRIGGER IF EXISTS moderation_auditentry_append_only ON moderation_auditentry;
DROP FUNCTION IF EXISTS moderation_auditentry_guard();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("moderation", "0014_audit_legacy_content")]

    operations = [
        migrations.AlterField(
            model_name="auditentry",
            name="content",
            field=models.BinaryField(help_text="The exact bytes hashed into the entry's leaf."),
        ),
        migrations.RunPython(forwards, backwards),
    ]
