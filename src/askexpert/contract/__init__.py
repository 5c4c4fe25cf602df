"""The contract between build time and run time: what a bundle holds and what travels on the wire.

Torch-free (pydantic and NumPy only), and below every other package but :mod:`askexpert.errors` and
:mod:`askexpert.security`: the edge device, the expert server and the training code read the same
definitions, and nothing here knows how a model is trained or served.

* :mod:`.confidence`: the confidence rules (one registry: ``RULES``).
* :mod:`.labels`: the ids every side agrees on (``OTHER``: an expert's "not one of my classes";
  ``GENERAL``: the general model served as an expert).
* :mod:`.schema`: ``system.json`` (:class:`~.schema.SystemManifest`), the partition, a model's input spec.
* :mod:`.bundle`: open a bundle directory or archive and verify every file's sha256.
* :mod:`.protocol`: the wire format (request bodies, the response models, the one function that
  builds an answer).
* :mod:`.onnx`: the metadata an exported generalist carries (class names, input spec).

This ``__init__`` imports nothing, so each module stays as light as it is.
"""
