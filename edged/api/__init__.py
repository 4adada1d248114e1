"""The register API (/v1), its middleware and its OpenAPI contract."""
