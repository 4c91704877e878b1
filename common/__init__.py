"""What more than one layer needs and none owns. Standard library only, so the router and
the client side can use it without loading any engine code.

- checks.py        a value against its limits, written once (InvalidFieldError); sampling fields
                   and settings declare theirs with these
- settings.py      `setting()`, check_settings, leaf_fields, from_flat: settings declared once as
                   frozen dataclasses
- flags.py         command-line flags generated from settings dataclasses, for every CLI
- prefix_hash.py   prefix-cache block hashes, chained and salted per tenant (engine and router)
- threads.py       the cores this process may use (affinity, cgroup quota)
- stages.py        start-up stages logged as they run, with their times
- log_text.py      caller-chosen text escaped for a log line (no line breaks, ANSI or bidi codes)
"""
