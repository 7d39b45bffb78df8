"""Serving: everything between an HTTP request and the model core, for ``service.py``.

``settings`` (``CLASSIFIER_*``), ``parsing`` (the one adapter to BentoML internals: multipart
files only), ``decoding`` (a request's uploads under its budgets, off the event loop),
``runtime`` (``build_runtime``: predictor, torch thread, decoder, warm-up), ``schemas`` (the
responses), ``guard`` and ``http_front`` (API keys, body limits, overload answers),
``telemetry`` (the service's own metrics), ``model_store`` (the served model's entry in the
BentoML store), ``image`` (the container recipe) and ``app`` (what the service class delegates
to). A new endpoint's logic goes in ``app``; its request and response types in ``schemas``.
"""
