"""Rules that turn vehicles' behaviour into vehicle-alarm warnings (两客一危 monitoring).

``terminal_alarms.py``: the alarm bits terminals raise themselves (SOS first). Each violation
is one warning with a start, updates and an end — never one per position.
"""
