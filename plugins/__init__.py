"""The built-in mosix-py features, each a plugin of the ``mosix.plugins`` entry-point group.

Installed, this package is importable as ``mosix_plugins``. Every hook
implementation here is ``trylast`` where it decides something, so a site plugin
answering the same hook wins.
"""
