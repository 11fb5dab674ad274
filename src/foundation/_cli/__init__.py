"""The command groups of the ``foundation`` command (``foundation.cli`` is the entry point).

One module per group: ``_flags``, ``_migration``, ``_agents``, ``_admin``;
``_common`` holds settings, output and key/value parsing.
"""
