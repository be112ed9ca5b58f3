"""Sharing: export, the Hugging Face Hub, model cards."""
