"""The Eclipse SUMO ground-truth harness (issue 15 §1).

SUMO (PyPI ``eclipse-sumo``, ``sumolib``) simulates a network built by ``netconvert`` from a real
OSM file or the demo city; a share of its vehicles is replayed into a running TTI as JT/T 808
terminals through the real gateway, on the one accelerated clock, and so are buses running
the demo city's GTFS timetable; TTI's segment speeds, warnings and bus ETAs are scored against
SUMO's own measurements. Modules: ``binaries`` (where SUMO is), ``network``, ``demand`` (trips
with peaks, incidents), ``buses`` (GTFS trips as SUMO buses), ``simulate`` (runs SUMO, reads
its output), ``mapping`` (SUMO edges onto TTI segments), ``replay``, ``host`` (TTI in this
process), ``score``, ``eta`` (bus ETAs), ``run`` (the command).
"""
