"""The warning service's HTTP API (``/v1/…``): routes, warnings, incidents, the area index."""
