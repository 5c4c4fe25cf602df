"""Build time: the collaborative system made into one deployable unit (torch, the dataset).

* :mod:`.pipeline`: train the models a system needs from configs, resumably.
* :mod:`.calibrate`: the models' outputs on validation, temperatures and tau (shared with the offline
  evaluation, so offline and live figures agree image by image).
* :mod:`.build`: calibrate on validation data and write the bundle.

What a bundle holds and how it is read (``system.json``, the partition, the input spec, verification)
is the contract, :mod:`askexpert.contract`, which run time reads without torch.
"""
