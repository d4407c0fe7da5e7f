"""Tools for running the service on a developer's machine; nothing here serves traffic.

Only the command line (``python -m actors --local-broker``) imports it.
"""
