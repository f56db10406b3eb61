"""The hook contract: the hook specifications (the one exact contract between the
kernel and its plugins), the records the hooks receive and return, and the plugin
manager that loads plugins through the ``mosix.plugins`` entry-point group."""
