"""Models, synthetic data, training, export and inference backends.

Layering: ``engines`` never imports ``monitor`` or ``dashboards``.
"""
