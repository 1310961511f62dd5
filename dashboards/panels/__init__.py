"""Dashboard panels: each owns its Bokeh models and an ``update`` that the app calls."""
