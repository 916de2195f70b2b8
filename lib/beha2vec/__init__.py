"""Beha2Vec: segment website users by browsing behaviour, as Spark jobs over Delta tables."""

__version__ = "0.1.0"
