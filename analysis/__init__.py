"""Analysis layer: per-block maps, structure metrics, figures and the service the UI calls.

Knows nothing of Gradio.
"""
