"""The han100 renderer (``askexpert data build han100``): fonts (the catalogue of Debian's CJK fonts, split by
design), chars (the classes, from Unicode's Han database), render (one seeded image), build (the task, its pool
and the manifest). The product reads a finished build (:mod:`askexpert.data.han`)."""
