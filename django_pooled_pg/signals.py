"""Receivers: override_settings(DATABASES=...) starts from fresh pools."""

from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from .registry import close_pools


@receiver(setting_changed)
def close_pools_on_databases_change(setting: str, **kwargs: Any) -> None:
    if setting == "DATABASES":
        close_pools()
