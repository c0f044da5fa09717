"""Benchmarks and load generators of the streaming server: tools beside the product, never imported by it.

``python -m benchmarks --help`` lists them. They use the server's public pieces
(``streaming.cli`` for the model options, ``streaming.loading`` for the model,
``streaming.server.BackgroundServer`` for an in-process server); ``streaming``
never imports this package.
"""
