"""The collaborative system as one deployable unit.

* :mod:`.schema`: the contract between build time and run time (``system.json``, the partition, a
  model's input spec): pydantic only, importable on an edge device without torch.
* :mod:`.bundle`: open a bundle directory or archive and verify every file's sha256 (torch-free).
* :mod:`.pipeline`: train the models a system needs from configs, resumably (build time, torch).
* :mod:`.build`: calibrate on validation data and write the bundle (build time, torch).

This ``__init__`` imports nothing, so ``askexpert.system.schema`` stays light.
"""
