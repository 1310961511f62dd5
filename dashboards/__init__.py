"""Bokeh dashboard for operando-monitor."""
