"""Rules that turn vehicles' behaviour into vehicle-alarm warnings (两客一危 monitoring).

``ruleset.py`` holds them all and is what the service feeds: ``speeding.py``, ``fatigue.py``,
``night.py`` (coaches 02:00-05:00), ``geofences.py`` and ``terminal_alarms.py`` (the alarm
bits terminals raise themselves, SOS first), on the episode bookkeeping of ``episodes.py``;
``driver_texts.py`` says what the driver is told. Each violation is one warning with a start,
updates and an end — never one per position.
"""
