"""Fill the new ImageCategory columns for rows written before them, where the image tells: the
suggestion is the image's imm_suggestion, and for an image with one category its rate is the
image's imm_rate (every offending frame carries that category's label then). An image with
several categories keeps no rate: only its stored result could tell them apart."""

from django.db import migrations
from django.db.models import Exists, OuterRef, Subquery


def backfill(apps, schema_editor):
    image_model = apps.get_model("moderation", "Image")
    category_model = apps.get_model("moderation", "ImageCategory")
    image = image_model.objects.filter(pk=OuterRef("image_id"))
    category_model.objects.filter(suggestion="").update(
        suggestion=Subquery(image.values("imm_suggestion")[:1])
    )
    another = category_model.objects.filter(image_id=OuterRef("image_id")).exclude(
        pk=OuterRef("pk")
    )
    category_model.objects.filter(rate__isnull=True).filter(~Exists(another)).update(
        rate=Subquery(image.values("imm_rate")[:1])
    )


class Migration(migrations.Migration):
    dependencies = [("moderation", "0016_routing_rate_thresholds")]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True)]
