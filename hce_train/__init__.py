"""HCE training: a dense encoder co-trained with a hierarchical tree over the corpus (torch + transformers).

Imports neither hnswlib nor optimum, so it runs on a bare GPU machine with only torch + transformers.
"""

from hce_serve import __version__  # the one version string of the distribution (hce_serve imports no torch)

__all__ = ["__version__"]
