"""The registry: MLflow <-> BentoML.

``mlflow_pyfunc`` logs a trained artifact as an MLflow "model from code" whose only shipped code
is the model core (``models/``); ``tracking_server`` checks a tracking URI before long work;
``bento_import`` copies a registered version into the BentoML store with its lineage;
``python -m registry import|resolve`` is the CLI. A new export format goes here.
"""
