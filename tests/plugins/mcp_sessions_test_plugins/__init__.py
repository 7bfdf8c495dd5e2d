"""Plugins that tests install through their entry points, as a third-party package would ship them.

Nothing imports this package directly: `tests/plugin_site.py` installs it into a temporary site folder
with its own `*.dist-info`, and the server finds its plugins by entry point like any other.
"""
