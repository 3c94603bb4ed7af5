"""On PostgreSQL, refuse UPDATE and DELETE on the audit log in the database itself.

The model refuses them too, but raw SQL, a shell or another client would not go through the
model. TRUNCATE is not refused: Django's test runner empties tables with it, and it needs
table-owner rights, which the application's database role should not have in production.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION moderation_auditentry_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on moderation_auditentry is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER moderation_auditentry_append_only
    BEFORE UPDATE OR DELETE ON moderation_auditentry
    FOR EACH ROW EXECUTE FUNCTION moderation_auditentry_refuse_change();
"""

DROP = """
DROP TRIGGER IF EXISTS moderation_auditentry_append_only ON moderation_auditentry;
DROP FUNCTION IF EXISTS moderation_auditentry_refuse_change();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("moderation", "0002_roles")]

    operations = [migrations.RunPython(forwards, backwards)]
