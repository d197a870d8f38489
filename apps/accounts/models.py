from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """A person or machine account of one tenant; each tenant schema has its own users."""

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
