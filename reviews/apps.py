from django.apps import AppConfig


class ReviewsConfig(AppConfig):
    name = "reviews"
    verbose_name = "Reviews"

    def ready(self) -> None:
        # moderation cannot import reviews, so it announces each serving of clear pixels and
        # the record of it is written here.
        from moderation.signals import pixels_served

        from .models import record_reveal

        pixels_served.connect(record_reveal, dispatch_uid="reviews.record_reveal")
