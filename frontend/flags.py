"""The serve flags come from the settings dataclasses: the generic code is worker/flags.py,
shared with `python -m worker serve`."""

from worker.flags import add_settings_flags, flag_name, settings_from_args

__all__ = ["add_settings_flags", "flag_name", "settings_from_args"]
