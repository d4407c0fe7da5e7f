"""The HTTP actor: its routes, its OpenAPI description and its server (quart-trio on hypercorn).

The only package that imports ``quart``, ``quart_trio`` or ``hypercorn``.
"""
