from django.apps import AppConfig


class QaConfig(AppConfig):
    name = "reviews.qa"
    label = "qa"
    verbose_name = "Quality assurance"

    def ready(self) -> None:
        # moderation announces automatic outcomes; reviews' decisions are saved rows. Both are
        # sampled here, in the transaction that made them (see sampling).
        from django.db.models.signals import post_save

        from moderation.signals import auto_settled
        from reviews.models import Decision

        from . import sampling

        auto_settled.connect(sampling.sample_auto_settled, dispatch_uid="qa.sample_auto_settled")
        post_save.connect(sampling.on_decision, sender=Decision, dispatch_uid="qa.on_decision")
