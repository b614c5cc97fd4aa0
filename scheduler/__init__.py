"""Beat: the schedule built from the registries, and its one active leader.

``schedule.build_beat_schedule`` makes the table; ``leader.LeaderScheduler`` fires it while it
holds the lease (start it with ``jobctl beat``); ``leader.leader_info()`` and
``leader.last_tick()`` tell who leads and when it last ticked.
"""
