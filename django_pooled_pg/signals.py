"""Receivers: override_settings(DATABASES=...) starts from fresh pools; a new host name in
POOLED_PG_STATUS re-tags the sessions."""

from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from . import conf, identity
from .registry import close_pools


@receiver(setting_changed)
def close_pools_on_databases_change(setting: str, **kwargs: Any) -> None:
    if setting == "DATABASES":
        close_pools()


@receiver(setting_changed)
def retag_sessions_on_host_change(setting: str, **kwargs: Any) -> None:
    if setting != "POOLED_PG_STATUS":
        return
    before = identity.host()
    identity.forget_host()
    if identity.host() != before:
        # Wrappers cache their connection parameters (and so the application_name) under
        # the options' generation: bump it, and let the pools of the old name go.
        conf.invalidate_lease_targets()
        close_pools()
