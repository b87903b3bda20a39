"""Annotation assets: counts, Tangram labels, clusters and cell types with their checks, and the reference
atlases they read (an observable source that rebuilds a slide's labels when its atlas changes).
"""

from assets.annotation.labels import cell_counts, cell_types, clusters, nucleus_counts, tangram_labels
from assets.annotation.reference_atlas import reference_atlas

ASSETS = [nucleus_counts, cell_counts, tangram_labels, clusters, cell_types]
SOURCES = [reference_atlas]
