"""The database holds a claim made by Start reviewing to the reviewer's exposure limits.

A trigger on the claims table, for rows with a `limits_day`, refuses the insert ("exposure
limit: <category>", an integrity error) when the image has a category the reviewer opted out of,
or whose count for that day has reached its cap (its own, else the default). It runs after the
insert's unique check, which waits for the reviewer's other claim to be let go, and its query
reads what is committed then (a volatile PL/pgSQL function takes a new snapshot per query on
PostgreSQL; SQLite has one writer at a time), so it sees every reveal the reviewer's other tabs
finished before this claim could be made, without a lock and without a round trip of its own.
reviews.exposure.limits holds the same rule in Python, to leave those categories out beforehand.
"""

from django.db import migrations

# The image's first category (by name) the reviewer may not be handed on NEW.limits_day.
REFUSED = """
    SELECT c.category FROM moderation_imagecategory c
    WHERE c.image_id = NEW.image_id AND c.category <> ''
      AND (
        EXISTS (
          SELECT 1 FROM exposure_optout o
          WHERE o.reviewer_id = NEW.reviewer_id AND o.category = c.category
        )
        OR EXISTS (
          SELECT 1 FROM exposure_exposurecount n
          WHERE n.reviewer_id = NEW.reviewer_id AND n.day = NEW.limits_day
            AND n.category = c.category
            AND n.previews + n.thumbnails + n.originals >= COALESCE(
              (SELECT k.images FROM exposure_exposurecap k WHERE k.category = c.category),
              (SELECT k.images FROM exposure_exposurecap k WHERE k.category = '')
            )
        )
      )
    ORDER BY c.category LIMIT 1
"""

POSTGRESQL = f"""
CREATE FUNCTION exposure_claim_within_limits() RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    refused text;
BEGIN
    {REFUSED.strip()} INTO refused;
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION 'exposure limit: %', refused USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER exposure_claim_within_limits AFTER INSERT ON reviews_claim
FOR EACH ROW WHEN (NEW.limits_day IS NOT NULL)
EXECUTE FUNCTION exposure_claim_within_limits();
"""

SQLITE = f"""
CREATE TRIGGER exposure_claim_within_limits AFTER INSERT ON reviews_claim
FOR EACH ROW WHEN NEW.limits_day IS NOT NULL AND EXISTS ({REFUSED})
BEGIN
    SELECT RAISE(ABORT, 'exposure limit');
END;
"""

DROP = {
    "postgresql": """
        DROP TRIGGER IF EXISTS exposure_claim_within_limits ON reviews_claim;
        DROP FUNCTION IF EXISTS exposure_claim_within_limits();
    """,
    "sqlite": "DROP TRIGGER IF EXISTS exposure_claim_within_limits;",
}


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in DROP:
        raise NotImplementedError(f"exposure limits need a trigger written for {vendor}")
    schema_editor.execute(POSTGRESQL if vendor == "postgresql" else SQLITE, params=None)


def drop(apps, schema_editor):
    schema_editor.execute(DROP[schema_editor.connection.vendor], params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("exposure", "0001_exposure"),
        ("reviews", "0007_claim_limits_day"),
        ("moderation", "0017_category_rates_backfill"),
    ]

    operations = [migrations.RunPython(create, drop)]
