from django.apps import AppConfig


class SlaConfig(AppConfig):
    name = "reviews.sla"
    label = "sla"
    verbose_name = "Response-time targets"

    def ready(self) -> None:
        # moderation cannot import reviews: the pipeline announces each routing, and the due
        # time of an image entering (or leaving) the queue is written here.
        from moderation.signals import review_routed

        from .due import on_routed

        review_routed.connect(on_routed, dispatch_uid="reviews.sla.due.on_routed")
