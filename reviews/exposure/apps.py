from django.apps import AppConfig


class ExposureConfig(AppConfig):
    name = "reviews.exposure"
    label = "exposure"
    verbose_name = "Reviewer exposure"

    def ready(self) -> None:
        # A later IMM word may give an item someone holds a category they may not be handed.
        from moderation.signals import review_routed

        from .limits import on_routed

        review_routed.connect(on_routed, dispatch_uid="reviews.exposure.limits.on_routed")
