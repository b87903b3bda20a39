"""The slide catalog (catalog.yaml) as a resource: which bundle, H&E and reference belong to a slide."""

from __future__ import annotations

from dagster import ConfigurableResource

from sthelar_platform.ingest.manifest import SlideCatalog, SlideSpec


class SlideCatalogResource(ConfigurableResource):
    """Registered slides (``catalog.yaml`` under the storage root)."""

    path: str

    def get(self, slide_id: str) -> SlideSpec:
        return SlideCatalog(self.path).get(slide_id)

    def list(self) -> list[SlideSpec]:
        return SlideCatalog(self.path).list()
