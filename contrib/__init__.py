"""Contributed plugins: policies that sites may want, not loaded by default.

Installed, this package is ``mosix_contrib``. Enable a module by naming it in a site
hook, or by copying it into the ``hooks_dir`` of ``mosd.conf``.
"""
