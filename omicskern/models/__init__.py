"""Model classes that load released checkpoints, built from omicskern.modules."""
