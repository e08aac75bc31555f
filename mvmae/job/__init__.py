"""The batch job from videos to shards (``mvmae extract run``): the plan and its run
(``job.py``), the supervised workers (``workers.py``) and the fault records (``faults.py``).
``mvmae.shards`` keeps the format, the writer and the reader."""
