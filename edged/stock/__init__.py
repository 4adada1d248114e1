"""The catalogue and local stock: sales, adjustments, counts, catalogue files."""
