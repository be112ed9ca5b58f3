"""Feature-extractor plugins for evaluation."""
