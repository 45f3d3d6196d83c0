"""Freeze-Omni on ESPnet: streaming speech encoder -> frozen LLM -> speech decoder."""
