"""The audit log becomes a verifiable log: the schema (moderation/audit/sequencer.py).

Entries get the exact bytes of their leaf (`content`, filled for existing entries by 0014 and
required from 0015) and their leaf hash; `seq` is empty until the sequencer gives the entry its
position, so pages order by id; the tree's perfect subtrees and the signed checkpoints get tables
of their own. The content hash is no longer unique: without its position, an entry's content may
repeat another's (two identical system entries in the same microsecond). The foreign keys lose
their own indexes, which the (actor, id) and (image, id) indexes make redundant.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("moderation", "0012_imm_rate_limit"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="AuditCheckpoint",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("tree_size", models.PositiveBigIntegerField(unique=True)),
                ("root_hash", models.BinaryField(max_length=32)),
                ("compact_range", models.BinaryField()),
                (
                    "signed_note",
                    models.TextField(help_text="The checkpoint as a C2SP signed note, verbatim."),
                ),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "ordering": ["-tree_size"],
            },
        ),
        migrations.CreateModel(
            name="AuditTreeNode",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "level",
                        "index",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("level", models.PositiveSmallIntegerField()),
                ("index", models.PositiveBigIntegerField()),
                ("hash", models.BinaryField(max_length=32)),
            ],
        ),
        migrations.AlterModelOptions(
            name="auditentry",
            options={"ordering": ["-id"], "verbose_name_plural": "audit entries"},
        ),
        migrations.RemoveIndex(
            model_name="auditentry",
            name="audit_image_seq",
        ),
        migrations.RemoveIndex(
            model_name="auditentry",
            name="audit_action_seq",
        ),
        migrations.RemoveIndex(
            model_name="auditentry",
            name="audit_actor_seq",
        ),
        migrations.AddField(
            model_name="auditentry",
            name="content",
            field=models.BinaryField(
                null=True, help_text="The exact bytes hashed into the entry's leaf."
            ),
        ),
        migrations.AddField(
            model_name="auditentry",
            name="leaf_hash",
            field=models.BinaryField(
                blank=True,
                help_text="SHA-256(0x00 || content); set with seq.",
                max_length=32,
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="entry_hash",
            field=models.CharField(help_text="SHA-256 of content, in hex.", max_length=64),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="prev_hash",
            field=models.CharField(
                blank=True,
                help_text="Entries from the hash-chain era only: the link.",
                max_length=64,
            ),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="seq",
            field=models.PositiveBigIntegerField(
                blank=True,
                help_text="Position in the log from 1 (the leaf index + 1); empty until sequenced.",
                null=True,
                unique=True,
            ),
        ),
        migrations.AddIndex(
            model_name="auditentry",
            index=models.Index(fields=["image", "id"], name="audit_image_id"),
        ),
        migrations.AddIndex(
            model_name="auditentry",
            index=models.Index(fields=["action", "id"], name="audit_action_id"),
        ),
        migrations.AddIndex(
            model_name="auditentry",
            index=models.Index(fields=["actor", "id"], name="audit_actor_id"),
        ),
        migrations.AddIndex(
            model_name="auditentry",
            index=models.Index(
                condition=models.Q(("seq__isnull", True)), fields=["id"], name="audit_waiting"
            ),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="actor",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                help_text="Empty when the system acted.",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="audit_entries",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AlterField(
            model_name="auditentry",
            name="image",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="audit_entries",
                to="moderation.image",
            ),
        ),
    ]
