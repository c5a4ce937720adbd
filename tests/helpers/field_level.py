"""The field-level study's tests' shared settings."""

from tfhalo.studies import field_level


def joint_quick(**overrides):
    """The quick preset with the joint sampler of the Config's defaults (:data:`field_level.JOINT_SAMPLER`),
    and ``overrides``."""
    return field_level.Config.preset("quick", **{**field_level.JOINT_SAMPLER, **overrides})
