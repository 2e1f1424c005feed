"""HCE training: a dense encoder co-trained with a hierarchical tree over the corpus (torch + transformers).

Imports neither hnswlib nor optimum, so it runs on a bare GPU machine with only torch + transformers.
"""

__version__ = "0.1.0"
