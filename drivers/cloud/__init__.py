"""What the cloud lane kinds share (``stripe_reader``, ``square_terminal``).

A cloud lane's terminal is driven through its processor's API, not a line of its own:
``poll`` holds the polling schedule, the cancellable pause and the lanes' settings;
``lane`` the base both adapters stand on (the run slot, ``collect``, ``cancel``, ``close``).
Each kind keeps its processor's own calls in its package.
"""
