"""The flag metadata that OpenFeature answers carry: one rule for every bridge.

``FoundationProvider`` (in process) and the admin server's OFREP endpoints
(over HTTP) both attach it to an evaluation, so a flag reads the same through
either: ``description`` when the flag has one (an undescribed flag has an empty
mapping), and, for a flag that a migration plan's stage switches on,
``migration_plan``, ``migration_stage`` (the stage number) and
``migration_stage_name``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from foundation.flags._declared import Flag
    from foundation.flags._migration import MigrationPlan

__all__ = ["MetadataValue", "flag_metadata", "stages_by_flag"]

MetadataValue = bool | int | float | str
_EMPTY: Final[Mapping[str, MetadataValue]] = MappingProxyType({})


def stages_by_flag(plans: Mapping[str, MigrationPlan]) -> dict[str, dict[str, MetadataValue]]:
    """Per flag named in a plan's stage: its plan, stage number and stage name.

    A flag in several plans is described by the first plan by name.

    Example:
        >>> from foundation.flags import MigrationPlan, Stage
        >>> stages_by_flag({"v2": MigrationPlan([Stage(1, "read", ["read_v2"])])})
        {'read_v2': {'migration_plan': 'v2', 'migration_stage': 1, 'migration_stage_name': 'read'}}
    """
    found: dict[str, dict[str, MetadataValue]] = {}
    for plan_name in sorted(plans, reverse=True):  # the first plan by name is written last
        for stage in plans[plan_name].stages:
            for flag in stage.flags:
                found[flag] = {
                    "migration_plan": plan_name,
                    "migration_stage": stage.number,
                    "migration_stage_name": stage.name,
                }
    return found


def flag_metadata(
    flag: Flag, stages: Mapping[str, Mapping[str, MetadataValue]]
) -> Mapping[str, MetadataValue]:
    """The read-only metadata of ``flag``, given ``stages_by_flag`` of the known plans.

    Example:
        >>> from foundation.flags import Flag
        >>> dict(flag_metadata(Flag("beta", description="new checkout"), {}))
        {'description': 'new checkout'}
        >>> dict(flag_metadata(Flag("beta"), {}))
        {}
    """
    entries: dict[str, MetadataValue] = {}
    if flag.description:
        entries["description"] = flag.description
    entries.update(stages.get(flag.name, {}))
    return MappingProxyType(entries) if entries else _EMPTY
